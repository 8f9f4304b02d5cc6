//! Acknowledging commands in the order they arrived, and recognising the
//! ones a broker delivers again after a reconnect.
//!
//! MQTT 3.1.1 (4.6, [MQTT-4.6.0-2]) wants PUBACKs in the order of the
//! PUBLISHes they answer. The node acknowledges a command only once it has
//! handled it, and a workload start is handled only when its launch has been
//! answered, so acks would otherwise go out of order: Mosquitto tolerates
//! that, rumqttd (the standalone broker) drops the connection ("out of order
//! ack") and delivers every unacknowledged command again. So each command
//! takes its place in a queue when it arrives, and its ack waits until every
//! earlier one is done.
//!
//! When a connection breaks, acks it sent shortly before may be lost with
//! it (a dead link goes unnoticed until the keep-alive says so), and a
//! broker that resumes the session delivers those commands again (at once,
//! before anything new). So the commands of the connection's last
//! [`ACK_DOUBT`] and those not yet acknowledged are remembered by topic and
//! payload until [`REDELIVERY_WINDOW`] after the reconnect: a redelivered
//! command that was already handled is acknowledged without reaching the
//! node a second time, and one still being handled is acknowledged together
//! with the original. A fresh session redelivers nothing, so nothing is
//! remembered then: a sender that repeats a command gets a new answer.
//! A broker may also send a command twice on one connection (Mosquitto
//! does after a session takeover: the queued copy, then the DUP one with the
//! same packet id); the DUP copy is recognised the same way.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use rumqttc::{Publish, QoS};

/// How long after a reconnect a command whose ack may have been lost with
/// the old connection is recognised when it comes again.
pub const REDELIVERY_WINDOW: Duration = Duration::from_secs(60);
/// Acks this recent when a connection breaks may not have reached the
/// broker: rumqttc notices a dead link only after two keep-alives (the
/// node's is 30 s).
pub const ACK_DOUBT: Duration = Duration::from_secs(90);
/// Recent acks remembered at most.
const MAX_RECENT: usize = 4096;

/// Identifies one received command for [`Acks::handled`].
pub type Seq = u64;

#[derive(Debug)]
struct Waiting {
    seq: Seq,
    pkid: u16,
    key: u64,
    done: bool,
}

#[derive(Debug, Clone, Copy)]
enum Lost {
    Handled,
    InProgress(Seq),
}

#[derive(Debug, Default)]
pub struct Acks {
    /// This connection's commands, in arrival order.
    order: VecDeque<Waiting>,
    next_seq: Seq,
    /// Acks this connection sent lately: when, for which packet id and
    /// command.
    recent: VecDeque<(Instant, u16, u64)>,
    /// Commands of broken connections whose ack never went out.
    lost: HashMap<u64, (Lost, Instant)>,
    /// A redelivered copy stands in for the original `Seq`.
    stand_ins: HashMap<Seq, Seq>,
}

fn key(publish: &Publish) -> u64 {
    let mut hasher = DefaultHasher::new();
    publish.topic.hash(&mut hasher);
    publish.payload.hash(&mut hasher);
    hasher.finish()
}

impl Acks {
    /// Connected again: a resumed session redelivers what was lost, and
    /// soon; a fresh one redelivers nothing.
    pub fn on_connected(&mut self, session_present: bool) {
        if !session_present {
            self.lost.clear();
            self.stand_ins.clear();
            return;
        }
        let now = Instant::now();
        for (_, since) in self.lost.values_mut() {
            *since = now;
        }
    }

    /// A command arrived. `Some(seq)`: hand it to the node, which calls
    /// [`Acks::handled`] with `seq` once done. `None`: a redelivery of one
    /// the node has already seen; it is acknowledged in its turn.
    pub fn on_received(&mut self, publish: &Publish) -> Option<Seq> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if publish.qos == QoS::AtMostOnce {
            return Some(seq); // nothing to acknowledge
        }
        let key = key(publish);
        if publish.dup {
            let same = |pkid: u16, k: u64| pkid == publish.pkid && k == key;
            if self.order.iter().any(|w| same(w.pkid, w.key)) {
                return None; // the original's ack answers both
            }
            if self.recent.iter().any(|(_, pkid, k)| same(*pkid, *k)) {
                self.order.push_back(Waiting {
                    seq,
                    pkid: publish.pkid,
                    key,
                    done: true,
                });
                return None;
            }
        }
        let redelivered = self
            .lost
            .remove(&key)
            .filter(|(_, since)| since.elapsed() < REDELIVERY_WINDOW)
            .map(|(lost, _)| lost);
        let done = matches!(redelivered, Some(Lost::Handled));
        self.order.push_back(Waiting {
            seq,
            pkid: publish.pkid,
            key,
            done,
        });
        match redelivered {
            None => Some(seq),
            Some(Lost::Handled) => None,
            Some(Lost::InProgress(original)) => {
                self.stand_ins.insert(original, seq);
                None
            }
        }
    }

    /// The node has handled command `seq`.
    pub fn handled(&mut self, seq: Seq) {
        let mut seq = seq;
        while let Some(stand_in) = self.stand_ins.remove(&seq) {
            seq = stand_in;
        }
        if let Some(waiting) = self.order.iter_mut().find(|w| w.seq == seq) {
            waiting.done = true;
            return;
        }
        for (lost, _) in self.lost.values_mut() {
            if matches!(lost, Lost::InProgress(s) if *s == seq) {
                *lost = Lost::Handled;
            }
        }
    }

    /// Hands every ack whose turn has come to `send`, in order, until it
    /// refuses one (no room in the request queue: try again later).
    pub fn release(&mut self, mut send: impl FnMut(u16) -> bool) {
        while self.order.front().is_some_and(|w| w.done) {
            let front = self.order.front().expect("checked");
            if !send(front.pkid) {
                return;
            }
            let now = Instant::now();
            while self.recent.front().is_some_and(|(at, _, _)| {
                now.duration_since(*at) > ACK_DOUBT || self.recent.len() >= MAX_RECENT
            }) {
                self.recent.pop_front();
            }
            self.recent.push_back((now, front.pkid, front.key));
            self.order.pop_front();
        }
    }

    /// Acks not yet handed over.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.order.len()
    }

    /// The connection broke: what it had not acknowledged, or only lately,
    /// is expected again if the broker resumes the session.
    pub fn on_lost(&mut self) {
        let now = Instant::now();
        self.lost
            .retain(|_, (_, since)| now.duration_since(*since) < REDELIVERY_WINDOW);
        for (at, _, key) in self.recent.drain(..) {
            if now.duration_since(at) <= ACK_DOUBT {
                self.lost.insert(key, (Lost::Handled, now));
            }
        }
        for waiting in self.order.drain(..) {
            let lost = match waiting.done {
                true => Lost::Handled,
                false => Lost::InProgress(waiting.seq),
            };
            self.lost.insert(waiting.key, (lost, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(pkid: u16, payload: &str) -> Publish {
        let mut p = Publish::new("c/command", QoS::AtLeastOnce, payload.as_bytes().to_vec());
        p.pkid = pkid;
        p
    }

    fn released(acks: &mut Acks) -> Vec<u16> {
        let mut out = Vec::new();
        acks.release(|pkid| {
            out.push(pkid);
            true
        });
        out
    }

    #[test]
    fn acks_leave_in_arrival_order() {
        let mut acks = Acks::default();
        let start = acks.on_received(&command(1, "start")).unwrap();
        let busy = acks.on_received(&command(2, "busy")).unwrap();
        acks.handled(busy);
        assert!(released(&mut acks).is_empty(), "waits for the start");
        acks.handled(start);
        assert_eq!(released(&mut acks), vec![1, 2]);
    }

    #[test]
    fn a_refused_ack_is_retried_in_order() {
        let mut acks = Acks::default();
        for pkid in [1, 2] {
            let seq = acks.on_received(&command(pkid, &pkid.to_string())).unwrap();
            acks.handled(seq);
        }
        acks.release(|_| false);
        assert_eq!(released(&mut acks), vec![1, 2]);
    }

    #[test]
    fn a_handled_command_delivered_again_is_only_acknowledged() {
        let mut acks = Acks::default();
        let seq = acks.on_received(&command(1, "status")).unwrap();
        acks.handled(seq);
        released(&mut acks); // sent just before the link broke
        acks.on_lost();
        acks.on_connected(true);
        assert_eq!(acks.on_received(&command(7, "status")), None);
        assert_eq!(released(&mut acks), vec![7]);
        assert!(
            acks.on_received(&command(8, "status")).is_some(),
            "a later identical command is a new one"
        );
    }

    #[test]
    fn a_new_connection_expects_nothing_of_its_own() {
        let mut acks = Acks::default();
        let seq = acks.on_received(&command(1, "status")).unwrap();
        acks.handled(seq);
        released(&mut acks);
        assert!(
            acks.on_received(&command(2, "status")).is_some(),
            "without a break, a repeat is a new command"
        );
    }

    #[test]
    fn a_copy_of_one_in_progress_is_acknowledged_with_it() {
        let mut acks = Acks::default();
        let start = acks.on_received(&command(1, "start")).unwrap();
        acks.on_lost();
        acks.on_connected(true);
        assert_eq!(acks.on_received(&command(3, "start")), None);
        let next = acks.on_received(&command(4, "status")).unwrap();
        acks.handled(next);
        assert!(released(&mut acks).is_empty(), "the copy holds its place");
        acks.handled(start);
        assert_eq!(released(&mut acks), vec![3, 4]);
    }

    #[test]
    fn a_copy_survives_a_second_break() {
        let mut acks = Acks::default();
        let start = acks.on_received(&command(1, "start")).unwrap();
        acks.on_lost();
        acks.on_connected(true);
        assert_eq!(acks.on_received(&command(2, "start")), None);
        acks.on_lost();
        acks.on_connected(true);
        assert_eq!(acks.on_received(&command(3, "start")), None);
        acks.handled(start);
        assert_eq!(released(&mut acks), vec![3]);
    }

    #[test]
    fn a_fresh_session_forgets_what_was_lost() {
        let mut acks = Acks::default();
        let seq = acks.on_received(&command(1, "status")).unwrap();
        acks.handled(seq);
        acks.on_lost();
        acks.on_connected(false);
        assert!(
            acks.on_received(&command(1, "status")).is_some(),
            "a sender's repeat is answered"
        );
    }

    #[test]
    fn a_dup_copy_on_the_same_connection_is_not_handled_again() {
        let mut acks = Acks::default();
        let first = acks.on_received(&command(1, "status")).unwrap();
        let mut copy = command(1, "status");
        copy.dup = true;
        assert_eq!(acks.on_received(&copy), None, "while the original waits");
        acks.handled(first);
        assert_eq!(released(&mut acks), vec![1]);
        assert_eq!(acks.on_received(&copy), None, "after its ack");
        assert_eq!(released(&mut acks), vec![1], "acknowledged again");
        let mut reused = command(1, "other");
        reused.dup = true;
        assert!(acks.on_received(&reused).is_some(), "another command");
    }

    #[test]
    fn qos0_needs_no_ack() {
        let mut acks = Acks::default();
        let mut p = command(0, "x");
        p.qos = QoS::AtMostOnce;
        let seq = acks.on_received(&p).unwrap();
        acks.handled(seq);
        assert!(released(&mut acks).is_empty());
    }
}
