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
//! When a connection breaks, the acks it had not written yet are lost, and
//! a broker that resumes the session delivers those commands again (at
//! once, before anything new). They are remembered here by topic and
//! payload until [`REDELIVERY_WINDOW`] after the reconnect: a redelivered
//! command that was already handled is acknowledged without reaching the
//! node a second time, and one still being handled is acknowledged together
//! with the original. A fresh session redelivers nothing, so nothing is
//! remembered then: a sender that repeats a command gets a new answer.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use rumqttc::{Publish, QoS};

/// How long after a reconnect a command whose ack was lost with the old
/// connection is recognised when it comes again.
pub const REDELIVERY_WINDOW: Duration = Duration::from_secs(60);

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
    /// Acks handed to rumqttc and not yet written to the socket.
    unwritten: HashMap<u16, u64>,
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
            self.unwritten.insert(front.pkid, front.key);
            self.order.pop_front();
        }
    }

    /// rumqttc wrote the ack for `pkid`.
    pub fn on_written(&mut self, pkid: u16) {
        self.unwritten.remove(&pkid);
    }

    /// The connection broke: whatever it had not acknowledged on the wire
    /// is expected again if the broker resumes the session.
    pub fn on_lost(&mut self) {
        let now = Instant::now();
        self.lost
            .retain(|_, (_, since)| now.duration_since(*since) < REDELIVERY_WINDOW);
        for (_, key) in self.unwritten.drain() {
            self.lost.insert(key, (Lost::Handled, now));
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
        released(&mut acks); // handed over, never written: the link broke
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
    fn a_written_ack_is_not_expected_again() {
        let mut acks = Acks::default();
        let seq = acks.on_received(&command(1, "status")).unwrap();
        acks.handled(seq);
        released(&mut acks);
        acks.on_written(1);
        acks.on_lost();
        assert!(acks.on_received(&command(1, "status")).is_some());
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
    fn qos0_needs_no_ack() {
        let mut acks = Acks::default();
        let mut p = command(0, "x");
        p.qos = QoS::AtMostOnce;
        let seq = acks.on_received(&p).unwrap();
        acks.handled(seq);
        assert!(released(&mut acks).is_empty());
    }
}
