//! The `sink-mqtt` thread: drives rumqttc's `Connection`, reconnects with backoff, keeps what
//! waits for the broker bounded, announces `online` on every connect, and turns `<prefix>/set`
//! messages into [`ControlRequest`]s whose outcome it publishes on `<prefix>/set/result`.
//!
//! Must not block on anything but the connection itself; never touches a frame.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, Outgoing, Packet, QoS, Request};

use super::{MqttStats, Topics};
use crate::problems::Problem;
use crate::sink::{ControlOutcome, ControlRequest};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Publishes the outcome of a set request on `<prefix>/set/result`.
#[derive(Clone)]
pub(super) struct Replier {
    pub(super) client: Client,
    pub(super) topic: String,
    pub(super) stats: Arc<MqttStats>,
}

impl Replier {
    fn send(&self, outcome: &ControlOutcome, id: Option<serde_json::Value>) {
        let body = match outcome {
            ControlOutcome::Applied { changed } => {
                self.stats.set_applied.fetch_add(1, Relaxed);
                serde_json::json!({"id": id, "applied": true, "changed": changed})
            }
            ControlOutcome::Rejected { problems } => {
                self.stats.set_rejected.fetch_add(1, Relaxed);
                let problems: Vec<_> =
                    problems.iter().map(|p| serde_json::json!({"key": p.key, "msg": p.msg})).collect();
                serde_json::json!({"id": id, "applied": false, "problems": problems})
            }
        };
        if self.client.try_publish(&self.topic, QoS::AtLeastOnce, false, body.to_string()).is_err() {
            self.stats.dropped_full.fetch_add(1, Relaxed);
        }
    }
}

/// The `sink-mqtt` thread: drives the connection, reconnects, answers `set`.
pub(super) struct EventLoop {
    pub(super) conn: Connection,
    pub(super) replier: Replier,
    pub(super) topics: Topics,
    pub(super) online: Vec<u8>,
    pub(super) control: Option<crossbeam_channel::Sender<ControlRequest>>,
    pub(super) stats: Arc<MqttStats>,
    pub(super) closing: Arc<AtomicBool>,
    pub(super) max_queued: usize,
    /// `host:port` and how we log in, for log lines.
    pub(super) broker: String,
    /// Disconnected when the thread ends (the sink's drop waits on it).
    pub(super) _done: crossbeam_channel::Sender<()>,
}

impl EventLoop {
    pub(super) fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = Some(Instant::now());
        let mut first = true;
        loop {
            let ev = match self.conn.recv() {
                Err(_) => return, // every client handle is gone
                Ok(ev) => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    self.on_connect(down_since.take(), first);
                    first = false;
                    backoff = BACKOFF_MIN;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == self.topics.set => self.on_set(&p.payload),
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    self.stats.sent.fetch_add(1, Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    self.stats.connected.store(false, Relaxed);
                    self.stats.errors.fetch_add(1, Relaxed);
                    if self.closing.load(Relaxed) {
                        return;
                    }
                    if down_since.is_none() || first {
                        // One line per outage (and one for a broker that is away at start).
                        log::warn!(
                            "[sink.mqtt] broker {}: {}; retrying with backoff up to {}s",
                            self.broker,
                            describe(&e),
                            BACKOFF_MAX.as_secs()
                        );
                        first = false;
                        down_since.get_or_insert_with(Instant::now);
                    }
                    self.trim_pending();
                    if !self.sleep(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sleep `d` in short steps; false when the sink is closing.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.closing.load(Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
        }
        !self.closing.load(Relaxed)
    }

    /// Subscribe and announce `online` before anything left from the last session.
    fn on_connect(&mut self, down_since: Option<Instant>, first: bool) {
        self.stats.connected.store(true, Relaxed);
        self.stats.connects.fetch_add(1, Relaxed);
        let pending = &mut self.conn.eventloop.pending;
        pending.push_front(Request::Subscribe(rumqttc::Subscribe::new(&self.topics.set, QoS::AtLeastOnce)));
        let mut online = rumqttc::Publish::new(&self.topics.status, QoS::AtLeastOnce, self.online.clone());
        online.retain = true;
        pending.push_front(Request::Publish(online));
        let (d, f) = self.stats.dropped();
        match down_since {
            Some(t) if !first => log::info!(
                "[sink.mqtt] broker {}: connected again after {:.1}s ({} messages dropped so far: {d} while away, {f} queue full)",
                self.broker,
                t.elapsed().as_secs_f64(),
                d + f
            ),
            _ => log::info!("[sink.mqtt] broker {}: connected", self.broker),
        }
    }

    /// After a connection error, keep only what is worth sending later: QoS 1 messages, the
    /// newest `max_queued` of them. The retained status and the subscription are sent anew on
    /// connect.
    fn trim_pending(&mut self) {
        trim(&mut self.conn.eventloop.pending, self.max_queued, &self.stats);
    }

    fn on_set(&self, payload: &[u8]) {
        let body: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                let p = Problem { key: "[set]".into(), msg: format!("not a JSON object: {e}") };
                return self.replier.send(&ControlOutcome::Rejected { problems: vec![p] }, None);
            }
        };
        let id = body.get("id").cloned();
        let Some(tx) = &self.control else {
            let p = Problem { key: "[set]".into(), msg: "remote control is not available in this command".into() };
            return self.replier.send(&ControlOutcome::Rejected { problems: vec![p] }, id);
        };
        let replier = self.replier.clone();
        let reply_id = id.clone();
        let req = ControlRequest::new(format!("mqtt {}", self.topics.set), body, move |o| replier.send(&o, reply_id));
        if tx.try_send(req).is_err() {
            let p = Problem { key: "[set]".into(), msg: "busy: earlier requests are still being applied".into() };
            self.replier.send(&ControlOutcome::Rejected { problems: vec![p] }, id);
        }
    }
}

/// Keep the QoS 1 messages of `pending` (the newest `max` of them), counting what goes; the
/// retained status and any subscription are dropped silently (sent anew on connect).
fn trim(pending: &mut VecDeque<Request>, max: usize, stats: &MqttStats) {
    pending.retain(|r| match r {
        Request::Publish(p) if p.retain => false,
        Request::Publish(p) if p.qos == QoS::AtMostOnce => {
            stats.dropped_disconnected.fetch_add(1, Relaxed);
            false
        }
        Request::Publish(_) => true,
        _ => false,
    });
    while pending.len() > max {
        pending.pop_front();
        stats.dropped_full.fetch_add(1, Relaxed);
    }
}

/// A connection error in words (a refused login says so plainly).
fn describe(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as C;
    match e {
        rumqttc::ConnectionError::ConnectionRefused(C::BadUserNamePassword) => {
            "refused the login: bad user name or password".into()
        }
        rumqttc::ConnectionError::ConnectionRefused(C::NotAuthorized) => "refused the login: not authorised".into(),
        rumqttc::ConnectionError::ConnectionRefused(c) => format!("refused the connection: {c:?}"),
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(io)) => format!("connection lost: {io}"),
        rumqttc::ConnectionError::Io(io) => format!("cannot connect: {io}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::Publish;

    #[test]
    fn trim_keeps_the_newest_qos1_messages_and_counts_the_rest() {
        let stats = MqttStats::default();
        let mut q = VecDeque::new();
        let mut status = Publish::new("p/status", QoS::AtLeastOnce, "online");
        status.retain = true;
        q.push_back(Request::Publish(status));
        q.push_back(Request::Subscribe(rumqttc::Subscribe::new("p/set", QoS::AtLeastOnce)));
        for i in 0..5u8 {
            q.push_back(Request::Publish(Publish::new("p/main/meta", QoS::AtLeastOnce, vec![i])));
            q.push_back(Request::Publish(Publish::new("p/main/mask", QoS::AtMostOnce, vec![i])));
        }
        trim(&mut q, 3, &stats);
        let kept: Vec<u8> = q
            .iter()
            .map(|r| match r {
                Request::Publish(p) => p.payload[0],
                other => panic!("kept {other:?}"),
            })
            .collect();
        assert_eq!(kept, [2, 3, 4]);
        assert_eq!(stats.dropped(), (5, 2));
    }

    #[test]
    fn errors_read_as_one_plain_line() {
        use rumqttc::ConnectionError as E;
        let lost = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection closed by peer");
        assert_eq!(
            describe(&E::MqttState(rumqttc::StateError::Io(lost))),
            "connection lost: connection closed by peer"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe(&E::Io(refused)), "cannot connect: connection refused");
        let bad = E::ConnectionRefused(rumqttc::ConnectReturnCode::BadUserNamePassword);
        assert_eq!(describe(&bad), "refused the login: bad user name or password");
    }
}
