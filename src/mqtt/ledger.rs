//! Which PUBACK acknowledges which publish.
//!
//! rumqttc hands out packet ids inside its event loop and does not tell the
//! publisher which one it got. It does report, in request order, every
//! publish it sends (`Outgoing::Publish(pkid)`), and every PUBACK. So every
//! publish the node makes queues a token here, in the same order as the
//! request queue; the first send of each publish pairs its pkid with the
//! next token, and the PUBACK for that pkid releases it. Resends of a pkid
//! already paired (session resume) are recognised and skipped, and when the
//! broker starts a fresh session rumqttc drops its unsent queue, whose tokens
//! are dropped here too: the outbox then publishes its events again.

use std::collections::{HashMap, VecDeque};

/// A tracked publish is an outbox id; `None` is a publish nobody waits for.
pub type Token = Option<u64>;

#[derive(Debug, Default)]
pub struct Ledger {
    queued: VecDeque<Token>,
    inflight: HashMap<u16, Token>,
    /// Publishes without a pkid in rumqttc's resend queue at the last loss.
    unassigned_at_loss: usize,
}

impl Ledger {
    /// A publish entered the request queue.
    pub fn queued(&mut self, token: Token) {
        self.queued.push_back(token);
    }

    /// The publish just queued never made it into the request queue.
    pub fn unqueue_last(&mut self) {
        self.queued.pop_back();
    }

    /// rumqttc sent a publish with `pkid`.
    pub fn on_sent(&mut self, pkid: u16) {
        if pkid != 0 && self.inflight.contains_key(&pkid) {
            return; // a resend after a resumed session
        }
        let token = self.queued.pop_front().flatten();
        if pkid != 0 {
            self.inflight.insert(pkid, token);
        }
    }

    /// The broker acknowledged `pkid`; returns the outbox id it confirms.
    pub fn on_acked(&mut self, pkid: u16) -> Token {
        self.inflight.remove(&pkid).flatten()
    }

    /// The connection broke; `unassigned` publishes wait in rumqttc's resend
    /// queue without a pkid.
    pub fn on_lost(&mut self, unassigned: usize) {
        self.unassigned_at_loss = unassigned;
    }

    /// Connected again. Without a resumed session rumqttc has dropped every
    /// unacknowledged publish and its resend queue: returns the outbox ids
    /// among them, which must be published again.
    pub fn on_connected(&mut self, session_present: bool) -> Vec<u64> {
        let mut dropped = Vec::new();
        if !session_present {
            let count = self.unassigned_at_loss.min(self.queued.len());
            dropped.extend(self.queued.drain(..count).flatten());
            dropped.extend(self.inflight.drain().filter_map(|(_, token)| token));
        }
        self.unassigned_at_loss = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_in_order_and_releases_on_ack() {
        let mut l = Ledger::default();
        l.queued(None);
        l.queued(Some(7));
        l.on_sent(1);
        l.on_sent(2);
        assert_eq!(l.on_acked(1), None);
        assert_eq!(l.on_acked(2), Some(7));
        assert_eq!(l.on_acked(2), None, "an ack releases once");
    }

    #[test]
    fn resumed_session_resends_are_skipped() {
        let mut l = Ledger::default();
        l.queued(Some(1));
        l.on_sent(5);
        l.queued(Some(2)); // still in the request queue when the link broke
        l.on_lost(0);
        assert!(l.on_connected(true).is_empty());
        l.on_sent(5); // resend of the paired publish
        l.on_sent(6); // first send of the queued one
        assert_eq!(l.on_acked(6), Some(2));
        assert_eq!(l.on_acked(5), Some(1));
    }

    #[test]
    fn fresh_session_drops_the_unsent_tokens() {
        let mut l = Ledger::default();
        l.queued(Some(1));
        l.on_sent(3);
        l.queued(Some(2)); // drained into the resend queue, no pkid yet
        l.on_lost(1);
        l.queued(Some(3)); // published while disconnected: survives
        let mut dropped = l.on_connected(false);
        dropped.sort();
        assert_eq!(dropped, vec![1, 2], "both must be published again");
        l.on_sent(1);
        assert_eq!(l.on_acked(1), Some(3));
        assert_eq!(l.on_acked(3), None, "the old pairing is gone");
    }
}
