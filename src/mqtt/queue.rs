//! The node's side of rumqttc's bounded request queue: nothing waits for
//! room in it.
//!
//! rumqttc's event loop drains its request queue only while connected, so
//! during a broker outage anything that awaits room there waits for the
//! broker. The node's event loop must keep running meanwhile (SIGTERM,
//! heartbeats, cancel deadlines), so every publish, ack and disconnect here
//! is a `try_*` that returns at once:
//!
//! - bulk (live output, progress, metrics, terminal bytes) goes only while
//!   connected and within the ledger's bulk allowance; when refused, its
//!   source keeps it (the bytes are on disk, the PTY is not read, the next
//!   sample replaces the last) and the node hears [`super::MqttEvent::Room`]
//!   once there is room again;
//! - essentials (responses, outbox events, presence) never fail: what the
//!   queue cannot take waits here, in order, and is handed over as the
//!   queue drains; acks wait in [`Acks`] for their turn the same way.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use rumqttc::{AsyncClient, ClientError, Publish, QoS, Request};

use super::acks::{Acks, Seq};
use super::ledger::{Ledger, Token, Tracked};

/// Essentials waiting for room at most; past it the oldest untracked one
/// (a response) is dropped with an error. Outbox events are never dropped
/// here: they are on disk and few.
const MAX_BACKLOG: usize = 4096;

struct Waiting {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    tracked: Tracked,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) ledger: Ledger,
    pub(super) acks: Acks,
    backlog: VecDeque<Waiting>,
    /// Something was refused for lack of room: tell the node when it frees.
    want_room: bool,
}

pub(super) struct Queue {
    client: AsyncClient,
    state: Mutex<State>,
}

impl Queue {
    pub(super) fn new(client: AsyncClient) -> Queue {
        Queue {
            client,
            state: Mutex::default(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a bulk publish if there is room now; otherwise hands the
    /// payload back to the caller, who hears `Room` later.
    pub(super) fn try_bulk(
        &self,
        topic: &str,
        payload: Vec<u8>,
        tracked: Tracked,
    ) -> Result<(), Vec<u8>> {
        let mut state = self.lock();
        let bytes = payload.len();
        let outcome = if state.backlog.is_empty() && state.ledger.bulk_room(bytes) {
            let token = Token {
                tracked,
                bulk: Some(bytes),
            };
            self.send(&mut state, topic.to_owned(), payload, false, token)
        } else {
            Err(payload)
        };
        if outcome.is_err() {
            state.want_room = true;
        }
        outcome
    }

    /// Whether bulk would be taken now.
    pub(super) fn bulk_ready(&self) -> bool {
        let state = self.lock();
        state.backlog.is_empty() && state.ledger.bulk_room(0)
    }

    /// Queues an essential publish now, or as soon as there is room.
    pub(super) fn essential(&self, topic: &str, payload: Vec<u8>, retain: bool, tracked: Tracked) {
        let mut state = self.lock();
        self.flush_backlog(&mut state);
        let topic = topic.to_owned();
        let waiting = if state.backlog.is_empty() {
            let token = Token::essential(tracked.clone());
            match self.send(&mut state, topic.clone(), payload, retain, token) {
                Ok(()) => return,
                Err(payload) => Waiting {
                    topic,
                    payload,
                    retain,
                    tracked,
                },
            }
        } else {
            Waiting {
                topic,
                payload,
                retain,
                tracked,
            }
        };
        if state.backlog.len() >= MAX_BACKLOG {
            if let Some(at) = state
                .backlog
                .iter()
                .position(|w| w.tracked == Tracked::Untracked)
            {
                let dropped = state.backlog.remove(at).expect("found");
                tracing::error!(
                    topic = %dropped.topic,
                    "{MAX_BACKLOG} messages wait for the MQTT link; dropping the oldest response"
                );
            }
        }
        state.backlog.push_back(waiting);
        state.want_room = true;
    }

    /// The node has handled command `seq`: its ack leaves in its turn.
    pub(super) fn ack(&self, seq: Seq) {
        let mut state = self.lock();
        state.acks.handled(seq);
        self.release_acks(&mut state);
    }

    /// Hands over what waits (acks, essentials) as far as the queue takes
    /// it; `true` when the node asked for room since the last call.
    pub(super) fn flush(&self) -> bool {
        let mut state = self.lock();
        self.release_acks(&mut state);
        self.flush_backlog(&mut state);
        std::mem::take(&mut state.want_room)
    }

    /// Queues the disconnect once nothing waits in the backlog; `false`:
    /// try again later.
    pub(super) fn try_disconnect(&self) -> bool {
        let mut state = self.lock();
        self.flush_backlog(&mut state);
        state.backlog.is_empty() && self.client.try_disconnect().is_ok()
    }

    pub(super) fn client(&self) -> &AsyncClient {
        &self.client
    }

    fn release_acks(&self, state: &mut State) {
        if !state.ledger.connected() {
            return; // an old connection's pkids mean nothing to the next one
        }
        state.acks.release(|pkid| {
            let mut ack = Publish::new("", QoS::AtLeastOnce, Vec::new());
            ack.pkid = pkid;
            self.client.try_ack(&ack).is_ok()
        });
    }

    fn flush_backlog(&self, state: &mut State) {
        while let Some(waiting) = state.backlog.pop_front() {
            let token = Token::essential(waiting.tracked.clone());
            let Waiting {
                topic,
                payload,
                retain,
                tracked,
            } = waiting;
            if let Err(payload) = self.send(state, topic.clone(), payload, retain, token) {
                state.backlog.push_front(Waiting {
                    topic,
                    payload,
                    retain,
                    tracked,
                });
                return;
            }
        }
    }

    /// Queues one publish with its ledger token; a full queue hands the
    /// payload back.
    fn send(
        &self,
        state: &mut State,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        token: Token,
    ) -> Result<(), Vec<u8>> {
        if !rumqttc::valid_topic(&topic) {
            // Never taken, so never retried: it would block the backlog.
            tracing::error!(topic, "not a valid MQTT topic to publish on; dropped");
            return Ok(());
        }
        state.ledger.queued(token);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => Ok(()),
            Err(
                ClientError::TryRequest(Request::Publish(p))
                | ClientError::Request(Request::Publish(p)),
            ) => {
                state.ledger.unqueue_last();
                Err(p.payload.into())
            }
            Err(_) => {
                state.ledger.unqueue_last();
                Err(Vec::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::MqttOptions;

    /// A queue whose rumqttc request queue holds `cap` requests and is never
    /// drained (no event loop runs).
    fn queue(cap: usize) -> (Queue, rumqttc::EventLoop) {
        let (client, eventloop) = AsyncClient::new(MqttOptions::new("t", "localhost", 1), cap);
        (Queue::new(client), eventloop)
    }

    #[test]
    fn bulk_waits_for_a_connection_and_room() {
        let (queue, _eventloop) = queue(8);
        assert_eq!(
            queue.try_bulk("t/logs", b"x".to_vec(), Tracked::Untracked),
            Err(b"x".to_vec()),
            "disconnected: the payload comes back"
        );
        assert!(queue.flush(), "the refusal asks for room");
        queue.lock().ledger.on_connected(false);
        assert!(queue.bulk_ready());
        assert!(queue
            .try_bulk("t/logs", b"x".to_vec(), Tracked::Untracked)
            .is_ok());
    }

    #[test]
    fn essentials_wait_in_order_and_hold_bulk_back() {
        let (queue, _eventloop) = queue(2);
        queue.lock().ledger.on_connected(false);
        for n in 0..3 {
            queue.essential("t/response", vec![n], false, Tracked::Untracked);
        }
        assert_eq!(queue.lock().backlog.len(), 1, "the third waits");
        assert!(
            !queue.bulk_ready(),
            "bulk never overtakes a waiting response"
        );
        assert!(queue
            .try_bulk("t/logs", b"x".to_vec(), Tracked::Untracked)
            .is_err());
        assert!(!queue.try_disconnect(), "the disconnect waits too");
    }

    #[test]
    fn acks_wait_for_a_connection() {
        let (queue, _eventloop) = queue(8);
        let mut publish = Publish::new("t/command", QoS::AtLeastOnce, b"status".to_vec());
        publish.pkid = 1;
        let seq = queue.lock().acks.on_received(&publish).unwrap();
        queue.ack(seq);
        assert_eq!(queue.lock().acks.waiting(), 1, "no connection, no ack");
        queue.lock().ledger.on_connected(false);
        queue.flush();
        assert_eq!(queue.lock().acks.waiting(), 0);
    }
}
