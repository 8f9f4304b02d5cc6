//! Which PUBACK acknowledges which publish, and how much bulk is in flight.
//!
//! rumqttc hands out packet ids inside its event loop and does not tell the
//! publisher which one it got. It does report, in request order, every
//! publish it sends (`Outgoing::Publish(pkid)`), and every PUBACK. So every
//! publish the node makes queues a token here, in the same order as the
//! request queue; the first send of each publish pairs its pkid with the
//! next token, and the PUBACK for that pkid releases it. Resends of a pkid
//! already paired (session resume) are recognised and skipped, and when the
//! broker starts a fresh session rumqttc drops its unsent queue, whose tokens
//! are dropped here too: the node then publishes again what matters (outbox
//! events, live output from the dropped chunk's offset).
//!
//! Bulk publishes (live output, metrics, terminal bytes) are counted from
//! the moment they are queued until their PUBACK (or their drop): that is
//! the memory they hold in rumqttc, and [`Ledger::bulk_room`] keeps it
//! bounded, so a slow or absent broker pushes back on their sources instead
//! of filling the request queue that responses and acks need.

use crate::protocol::Stream;
use std::collections::{HashMap, VecDeque};

/// Bulk publishes in flight at most (queued, sent, not yet acknowledged).
pub const MAX_BULK_COUNT: usize = 256;
/// Bulk bytes in flight at most; one message larger than this still goes
/// when nothing else is in flight.
pub const MAX_BULK_BYTES: usize = 4 * 1024 * 1024;

/// Who waits for a publish's PUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// Nobody (responses, presence, metrics, terminal bytes).
    Untracked,
    /// An outbox event: [`Ledger::on_acked`] confirms it; a fresh session
    /// that drops it hands it back to be published again.
    Outbox(u64),
    /// A chunk of live output: a fresh session that drops it hands it back,
    /// so its stream goes on again from `offset`.
    Output {
        request_id: String,
        stream: Stream,
        offset: u64,
    },
}

/// One publish the ledger follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tracked: Tracked,
    /// Payload bytes when it counts as bulk; `None` for essentials.
    pub bulk: Option<usize>,
}

impl Token {
    pub fn essential(tracked: Tracked) -> Token {
        Token {
            tracked,
            bulk: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Ledger {
    queued: VecDeque<Token>,
    inflight: HashMap<u16, Token>,
    /// Publishes without a pkid in rumqttc's resend queue at the last loss.
    unassigned_at_loss: usize,
    bulk_count: usize,
    bulk_bytes: usize,
    connected: bool,
}

impl Ledger {
    /// A publish entered the request queue.
    pub fn queued(&mut self, token: Token) {
        if let Some(bytes) = token.bulk {
            self.bulk_count += 1;
            self.bulk_bytes += bytes;
        }
        self.queued.push_back(token);
    }

    /// The publish just queued never made it into the request queue.
    pub fn unqueue_last(&mut self) {
        if let Some(token) = self.queued.pop_back() {
            self.release(&token);
        }
    }

    /// Whether a bulk publish of `bytes` may be queued now: only while
    /// connected, and within the bulk allowance.
    pub fn bulk_room(&self, bytes: usize) -> bool {
        self.connected
            && self.bulk_count < MAX_BULK_COUNT
            && (self.bulk_bytes == 0 || self.bulk_bytes + bytes <= MAX_BULK_BYTES)
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    /// rumqttc sent a publish with `pkid`.
    pub fn on_sent(&mut self, pkid: u16) {
        if pkid != 0 && self.inflight.contains_key(&pkid) {
            return; // a resend after a resumed session
        }
        let Some(token) = self.queued.pop_front() else {
            return;
        };
        if pkid != 0 {
            self.inflight.insert(pkid, token);
        } else {
            self.release(&token);
        }
    }

    /// The broker acknowledged `pkid`; returns who waited for it.
    pub fn on_acked(&mut self, pkid: u16) -> Tracked {
        match self.inflight.remove(&pkid) {
            Some(token) => {
                self.release(&token);
                token.tracked
            }
            None => Tracked::Untracked,
        }
    }

    /// The connection broke; `unassigned` publishes wait in rumqttc's resend
    /// queue without a pkid.
    pub fn on_lost(&mut self, unassigned: usize) {
        self.unassigned_at_loss = unassigned;
        self.connected = false;
    }

    /// Connected again. Without a resumed session rumqttc has dropped every
    /// unacknowledged publish and its resend queue: returns those whose loss
    /// matters (outbox events, live output), to be published again.
    pub fn on_connected(&mut self, session_present: bool) -> Vec<Tracked> {
        self.connected = true;
        let mut dropped = Vec::new();
        if !session_present {
            let count = self.unassigned_at_loss.min(self.queued.len());
            let lost: Vec<Token> = self
                .queued
                .drain(..count)
                .chain(self.inflight.drain().map(|(_, token)| token))
                .collect();
            for token in lost {
                self.release(&token);
                if token.tracked != Tracked::Untracked {
                    dropped.push(token.tracked);
                }
            }
        }
        self.unassigned_at_loss = 0;
        dropped
    }

    fn release(&mut self, token: &Token) {
        if let Some(bytes) = token.bulk {
            self.bulk_count = self.bulk_count.saturating_sub(1);
            self.bulk_bytes = self.bulk_bytes.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(id: u64) -> Token {
        Token::essential(Tracked::Outbox(id))
    }

    fn bulk(bytes: usize) -> Token {
        Token {
            tracked: Tracked::Untracked,
            bulk: Some(bytes),
        }
    }

    #[test]
    fn pairs_in_order_and_releases_on_ack() {
        let mut l = Ledger::default();
        l.queued(Token::essential(Tracked::Untracked));
        l.queued(outbox(7));
        l.on_sent(1);
        l.on_sent(2);
        assert_eq!(l.on_acked(1), Tracked::Untracked);
        assert_eq!(l.on_acked(2), Tracked::Outbox(7));
        assert_eq!(l.on_acked(2), Tracked::Untracked, "an ack releases once");
    }

    #[test]
    fn resumed_session_resends_are_skipped() {
        let mut l = Ledger::default();
        l.queued(outbox(1));
        l.on_sent(5);
        l.queued(outbox(2)); // still in the request queue when the link broke
        l.on_lost(0);
        assert!(l.on_connected(true).is_empty());
        l.on_sent(5); // resend of the paired publish
        l.on_sent(6); // first send of the queued one
        assert_eq!(l.on_acked(6), Tracked::Outbox(2));
        assert_eq!(l.on_acked(5), Tracked::Outbox(1));
    }

    #[test]
    fn fresh_session_drops_the_unsent_tokens() {
        let mut l = Ledger::default();
        l.queued(outbox(1));
        l.on_sent(3);
        l.queued(outbox(2)); // drained into the resend queue, no pkid yet
        l.on_lost(1);
        l.queued(outbox(3)); // published while disconnected: survives
        let mut dropped = l.on_connected(false);
        dropped.sort_by_key(|t| format!("{t:?}"));
        assert_eq!(dropped, vec![Tracked::Outbox(1), Tracked::Outbox(2)]);
        l.on_sent(1);
        assert_eq!(l.on_acked(1), Tracked::Outbox(3));
        assert_eq!(l.on_acked(3), Tracked::Untracked, "the old pairing is gone");
    }

    #[test]
    fn bulk_is_bounded_until_acknowledged_or_dropped() {
        let mut l = Ledger::default();
        assert!(!l.bulk_room(1), "no bulk while disconnected");
        l.on_connected(false);
        assert!(
            l.bulk_room(MAX_BULK_BYTES * 2),
            "one large message when idle"
        );
        l.queued(bulk(MAX_BULK_BYTES - 10));
        assert!(!l.bulk_room(11));
        assert!(l.bulk_room(10));
        l.on_sent(1);
        assert!(!l.bulk_room(11), "sent is still in flight");
        l.on_acked(1);
        assert!(l.bulk_room(MAX_BULK_BYTES));
        for _ in 0..MAX_BULK_COUNT {
            l.queued(bulk(1));
        }
        assert!(!l.bulk_room(1), "count bound");
        l.on_lost(MAX_BULK_COUNT);
        assert!(!l.bulk_room(1));
        l.on_connected(false);
        assert!(l.bulk_room(1), "a fresh session's drop releases them");
    }

    #[test]
    fn dropped_output_is_handed_back() {
        let mut l = Ledger::default();
        l.on_connected(false);
        let chunk = Tracked::Output {
            request_id: "r".into(),
            stream: Stream::Stdout,
            offset: 64,
        };
        l.queued(Token {
            tracked: chunk.clone(),
            bulk: Some(10),
        });
        l.on_sent(4);
        l.on_lost(0);
        assert_eq!(l.on_connected(false), vec![chunk]);
    }
}
