//! `mqtt` sink: publish each frame's results to an MQTT broker, announce the device, and take
//! remote changes of the live knobs (a fleet of devices on one broker).
//!
//! Topics (`<prefix>` = `topic_prefix`, default `ailurus/<hostname>`; `<stream>` = `main`, or
//! the stream's name with `[streams.NAME]`):
//! - `<prefix>/<stream>/meta`  one JSON per frame (schema: `docs/mqtt-meta.schema.json`):
//!   sequence number, capture time, frame and input size, M, latency, and per class its pixel
//!   fraction and the bounding boxes of its 5 largest 4-connected regions
//! - `<prefix>/<stream>/mask`  every `every_n`-th frame: the mask PNG (the `files` sink's) or
//!   the run-length encoding of [`regions::rle_encode`]; that frame's meta says which (`mask`)
//! - `<prefix>/status`         retained: `online` (version, model, config summary, `streams`:
//!   every stream's name, `["main"]` for one source) on every connect, `offline` as the Last Will (and on a clean shutdown)
//! - `<prefix>/set`            subscribed: a JSON object of live knobs, handed up through
//!   [`SinkContext::control`]; the outcome goes to `<prefix>/set/result`
//!
//! The connection thread lives in `mqtt/conn.rs`, the mask statistics and RLE in
//! `mqtt/regions.rs`.
//!
//! Client: rumqttc's sync `Client` + `Connection`. Chosen because it is maintained, pure Rust
//! (rustls with ring for TLS: no OpenSSL, no cmake), and its `Connection` is an iterator we
//! drive on a thread of our own, so no async runtime leaks into the rest of the program (it
//! keeps a current-thread tokio runtime inside the connection). Version 0.24: its TLS stack
//! (rustls 0.22) uses ring, which cross-builds for aarch64 without extra tools.
//!
//! Never blocks inference: `publish` only enqueues with `try_publish` into a channel bounded by
//! `max_queued`; the network is served by the `sink-mqtt` thread. While the broker is away,
//! QoS 0 messages are dropped at once and QoS 1 messages wait, at most `max_queued` in the
//! channel and `max_queued` in the client's retry list; everything beyond is dropped. Every
//! drop is counted (`ailurus_mqtt_messages_dropped_total{reason}`). The thread reconnects with
//! backoff (0.1 s doubling to 2 s), logs one line when an outage starts and one when it ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use image::ImageEncoder;
use rumqttc::{Client, LastWill, MqttOptions, QoS};
use serde::{Deserialize, Serialize};

use super::{Output, Sink, SinkContext, SinkError};
use crate::choice::Choice;
use crate::problems::Problems;
use crate::status::{Health, StatusProvider};

mod conn;
mod regions;
mod topics;
use conn::{EventLoop, Replier};
pub use regions::{rle_encode, ClassStat, Labeler, Region};
pub use topics::Topics;

crate::choice_enum! {
    /// `[sink.mqtt] masks`: how the `mask` topic carries the mask.
    pub enum MaskFormat { Png = "png", Rle = "rle", None = "none" }
}

/// `[sink.mqtt]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub enabled: bool,
    /// Broker host name or address.
    pub host: String,
    /// Broker TCP port.
    pub port: u32,
    /// MQTT client id ("" = this machine's hostname). Unique per device on one broker.
    pub client_id: String,
    /// Topic prefix ("" = `ailurus/<hostname>`). No wildcards, no trailing '/'.
    pub topic_prefix: String,
    /// 0 (at most once) or 1 (at least once, queued while the broker is away).
    pub qos: u8,
    /// "png", "rle" or "none".
    pub masks: Choice<MaskFormat>,
    /// Publish the mask every this many frames (the meta goes out every frame).
    pub every_n: u32,
    /// MQTT keep-alive in seconds (the broker declares us gone after 1.5x this).
    pub keepalive_s: u64,
    /// Messages waiting for the broker at most (the rest are dropped and counted).
    pub max_queued: usize,
    /// File with the user name on its first line and the password on its second ("" = none).
    /// Under systemd: `LoadCredential=mqtt:/etc/ailurus/mqtt.cred` and
    /// `credentials = "/run/credentials/ailurus.service/mqtt"`.
    pub credentials: PathBuf,
    pub tls: MqttTlsConfig,
}

/// `[sink.mqtt.tls]`
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MqttTlsConfig {
    pub enabled: bool,
    /// PEM file of the CA(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for brokers that require one (both or neither).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            topic_prefix: String::new(),
            qos: 0,
            masks: MaskFormat::Png.into(),
            every_n: 10,
            keepalive_s: 30,
            max_queued: 64,
            credentials: PathBuf::new(),
            tls: MqttTlsConfig::default(),
        }
    }
}

const S: &str = "sink.mqtt";

impl MqttConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(!self.host.is_empty() && !self.host.contains(char::is_whitespace), S, "host", || {
            format!("{:?} is not a host name or address", self.host)
        });
        p.check((1..=65535).contains(&self.port), S, "port", || format!("{} is not a port", self.port));
        p.check(self.qos <= 1, S, "qos", || format!("{} is not 0 or 1", self.qos));
        self.masks.check(p, S, "masks");
        p.check(self.every_n >= 1, S, "every_n", || "must be >= 1".into());
        p.check((5..=3600).contains(&self.keepalive_s), S, "keepalive_s", || {
            format!("{} is not in 5..=3600", self.keepalive_s)
        });
        p.check((1..=100_000).contains(&self.max_queued), S, "max_queued", || {
            format!("{} is not in 1..=100000", self.max_queued)
        });
        let bad_topic = |t: &str| t.contains(['+', '#', '\0']) || t.ends_with('/') || t.starts_with('/');
        p.check(!bad_topic(&self.topic_prefix), S, "topic_prefix", || {
            format!("{:?}: no wildcards (+ #), no leading or trailing '/'", self.topic_prefix)
        });
        p.check(self.client_id.len() <= 128, S, "client_id", || "longer than 128 bytes".into());
        let t = &self.tls;
        p.check(!t.enabled || !t.ca_file.as_os_str().is_empty(), S, "tls.ca_file", || {
            "must name the CA file when tls.enabled".into()
        });
        p.check(t.cert_file.as_os_str().is_empty() == t.key_file.as_os_str().is_empty(), S, "tls.key_file", || {
            "tls.cert_file and tls.key_file go together".into()
        });
    }
}

/// This machine's hostname (for the default client id and prefix).
pub fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok());
    h.map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).unwrap_or_else(|| "ailurus".into())
}

/// Counters and the connection state, for `/metrics` (through the status board).
#[derive(Default)]
pub struct MqttStats {
    broker: String,
    connected: AtomicBool,
    connects: AtomicU64,
    errors: AtomicU64,
    queued: AtomicU64,
    sent: AtomicU64,
    dropped_disconnected: AtomicU64,
    dropped_full: AtomicU64,
    set_applied: AtomicU64,
    set_rejected: AtomicU64,
}

impl MqttStats {
    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }
    /// Messages dropped: (broker away with QoS 0, queue full).
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped_disconnected.load(Relaxed), self.dropped_full.load(Relaxed))
    }
}

impl StatusProvider for MqttStats {
    fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(1024);
        let b = self.broker.replace('\\', "\\\\").replace('"', "\\\"");
        let n = |c: &AtomicU64| c.load(Relaxed);
        let fams: [(&str, &str, &str, String); 6] = [
            (
                "connected",
                "gauge",
                "1 while connected to the MQTT broker.",
                format!("{{broker=\"{b}\"}} {}", self.connected() as u8),
            ),
            ("connects_total", "counter", "Connections accepted by the broker.", format!(" {}", n(&self.connects))),
            (
                "connection_errors_total",
                "counter",
                "Connection attempts and connections that failed.",
                format!(" {}", n(&self.errors)),
            ),
            (
                "messages_queued_total",
                "counter",
                "Messages handed to the MQTT client.",
                format!(" {}", n(&self.queued)),
            ),
            (
                "messages_sent_total",
                "counter",
                "Messages written to the broker connection.",
                format!(" {}", n(&self.sent)),
            ),
            (
                "set_requests_total",
                "counter",
                "Remote set requests by outcome.",
                format!(
                    "{{result=\"applied\"}} {}\nailurus_mqtt_set_requests_total{{result=\"rejected\"}} {}",
                    n(&self.set_applied),
                    n(&self.set_rejected)
                ),
            ),
        ];
        for (name, kind, help, line) in fams {
            let _ = writeln!(
                s,
                "# HELP ailurus_mqtt_{name} {help}\n# TYPE ailurus_mqtt_{name} {kind}\nailurus_mqtt_{name}{line}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP ailurus_mqtt_messages_dropped_total Messages dropped: broker away (QoS 0) or queue full.\n\
             # TYPE ailurus_mqtt_messages_dropped_total counter\n\
             ailurus_mqtt_messages_dropped_total{{reason=\"disconnected\"}} {}\n\
             ailurus_mqtt_messages_dropped_total{{reason=\"queue_full\"}} {}",
            n(&self.dropped_disconnected),
            n(&self.dropped_full)
        );
        s
    }

    /// Always Ok: a broker that is away is a gauge, not an unhealthy service.
    fn health(&self) -> Health {
        Health::Ok
    }
}

#[derive(Serialize)]
struct Meta<'a> {
    seq: u64,
    captured_unix_ms: u64,
    stream: &'a str,
    width: u32,
    height: u32,
    input_size: u32,
    m: usize,
    latency_ms: f64,
    num_classes: u32,
    /// "png" or "rle" when this frame's mask follows on the mask topic, else null.
    mask: Option<&'static str>,
    classes: &'a [ClassStat],
}

/// Regions listed per class in the meta message.
pub const TOP_REGIONS: usize = 5;

pub struct MqttSink {
    client: Client,
    topics: Topics,
    /// The device prefix, and the topics of each named stream (`[streams.NAME]`) seen so far.
    prefix: String,
    named: Vec<Topics>,
    qos: QoS,
    masks: MaskFormat,
    every_n: u64,
    frames: u64,
    stats: Arc<MqttStats>,
    closing: Arc<AtomicBool>,
    offline: Vec<u8>,
    labeler: Labeler,
    classes: Vec<ClassStat>,
    rle: Vec<u8>,
    thread: Option<JoinHandle<()>>,
    done: crossbeam_channel::Receiver<()>,
}

fn qos_of(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn read_key_file(key: &'static str, path: &Path) -> Result<Vec<u8>, SinkError> {
    std::fs::read(path).map_err(|source| SinkError::KeyFile {
        sink: "mqtt",
        key,
        path: path.display().to_string(),
        source,
    })
}

/// User name and password from a two-line file.
fn credentials(path: &Path) -> Result<(String, String), SinkError> {
    let text = read_key_file("credentials", path)?;
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    match (lines.next(), lines.next()) {
        (Some(u), Some(p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err(SinkError::Key {
            sink: "mqtt",
            key: "credentials",
            msg: format!("{}: expected the user name on line 1 and the password on line 2", path.display()),
        }),
    }
}

impl MqttSink {
    /// Check the files the config names, then start the connection thread (the first connect
    /// happens there: a broker that is away at start is retried like any outage).
    pub fn build(cfg: &MqttConfig, base: &Path, ctx: &SinkContext) -> Result<MqttSink, SinkError> {
        let host = hostname();
        let client_id = if cfg.client_id.is_empty() { host.clone() } else { cfg.client_id.clone() };
        let prefix = if cfg.topic_prefix.is_empty() { format!("ailurus/{host}") } else { cfg.topic_prefix.clone() };
        let topics = Topics::new(&prefix, "main");
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let port = u16::try_from(cfg.port).map_err(|_| SinkError::Key {
            sink: "mqtt",
            key: "port",
            msg: format!("{} is not a port", cfg.port),
        })?;
        let mut opts = MqttOptions::new(client_id.clone(), cfg.host.clone(), port);
        let offline = |reason: &str| serde_json::json!({"state": "offline", "client_id": client_id, "reason": reason});
        let will = offline("connection lost").to_string();
        opts.set_keep_alive(Duration::from_secs(cfg.keepalive_s))
            .set_clean_session(true)
            .set_max_packet_size(64 << 20, 64 << 20)
            .set_last_will(LastWill::new(&topics.status, will, QoS::AtLeastOnce, true));
        let mut how = String::new();
        if !cfg.credentials.as_os_str().is_empty() {
            let path = resolve(&cfg.credentials);
            let (user, pass) = credentials(&path)?;
            how = format!(" as {user:?} (credentials {})", path.display());
            opts.set_credentials(user, pass);
        }
        if cfg.tls.enabled {
            let ca = read_key_file("tls.ca_file", &resolve(&cfg.tls.ca_file))?;
            let client_auth = if cfg.tls.cert_file.as_os_str().is_empty() {
                None
            } else {
                Some((
                    read_key_file("tls.cert_file", &resolve(&cfg.tls.cert_file))?,
                    read_key_file("tls.key_file", &resolve(&cfg.tls.key_file))?,
                ))
            };
            opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            }));
            how += " over TLS";
        }
        let (client, conn) = Client::new(opts, cfg.max_queued);
        let broker = format!("{}:{}", cfg.host, cfg.port);
        let stats = Arc::new(MqttStats { broker: broker.clone(), ..Default::default() });
        if let Some(board) = &ctx.board {
            board.register("mqtt", stats.clone());
        }
        let closing = Arc::new(AtomicBool::new(false));
        let online = serde_json::json!({
            "state": "online",
            "client_id": client_id,
            "version": env!("CARGO_PKG_VERSION"),
            "streams": if ctx.streams.is_empty() { vec![topics.stream.clone()] } else { ctx.streams.clone() },
            "about": ctx.about,
            "mqtt": {"qos": cfg.qos, "masks": cfg.masks.to_string(), "every_n": cfg.every_n},
        });
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let lp = EventLoop {
            conn,
            replier: Replier { client: client.clone(), topic: topics.set_result.clone(), stats: stats.clone() },
            topics: topics.clone(),
            online: online.to_string().into_bytes(),
            control: ctx.control.clone(),
            stats: stats.clone(),
            closing: closing.clone(),
            max_queued: cfg.max_queued,
            broker: format!("{broker}{how}"),
            _done: done_tx,
        };
        let thread = std::thread::Builder::new()
            .name("sink-mqtt".into())
            .spawn(move || lp.run())
            .map_err(|source| SinkError::Io { sink: "mqtt", path: "thread sink-mqtt".into(), source })?;
        log::info!("sink mqtt: publishing to {broker} under {prefix}/ as client {client_id:?}");
        Ok(MqttSink {
            client,
            topics,
            prefix: prefix.clone(),
            named: Vec::new(),
            qos: qos_of(cfg.qos),
            masks: cfg.masks.get(),
            every_n: cfg.every_n as u64,
            frames: 0,
            stats,
            closing,
            offline: offline("shutdown").to_string().into_bytes(),
            labeler: Labeler::default(),
            classes: Vec::new(),
            rle: Vec::new(),
            thread: Some(thread),
            done,
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn stats(&self) -> Arc<MqttStats> {
        self.stats.clone()
    }

    /// Enqueue without waiting; a message that cannot be queued is dropped and counted.
    fn send(&self, topic: &str, payload: Vec<u8>) {
        if self.qos == QoS::AtMostOnce && !self.stats.connected() {
            self.stats.dropped_disconnected.fetch_add(1, Relaxed);
            return;
        }
        match self.client.try_publish(topic, self.qos, false, payload) {
            Ok(()) => self.stats.queued.fetch_add(1, Relaxed),
            Err(_) => self.stats.dropped_full.fetch_add(1, Relaxed),
        };
    }

    fn encode_mask(&mut self, out: &Output) -> Result<Vec<u8>, SinkError> {
        let m = &out.mask;
        if self.masks == MaskFormat::Rle {
            rle_encode(&m.classes, m.width, m.height, m.num_classes, out.frame.seq, &mut self.rle);
            return Ok(self.rle.clone());
        }
        let png = super::render::mask_to_png(m);
        let mut buf = Vec::with_capacity(png.len() / 8 + 64);
        image::codecs::png::PngEncoder::new(&mut buf)
            .write_image(png.as_raw(), png.width(), png.height(), image::ExtendedColorType::L8)
            .map_err(|source| SinkError::Encode {
                sink: "mqtt",
                path: format!("mask of frame {}", out.frame.seq),
                source,
            })?;
        Ok(buf)
    }
}

impl Sink for MqttSink {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        let with_mask = self.masks != MaskFormat::None && self.frames.is_multiple_of(self.every_n);
        self.frames += 1;
        let m = &out.mask;
        let (w, h) = (m.width as usize, m.height as usize);
        self.labeler.class_stats(&m.classes, w, h, m.num_classes as usize, TOP_REGIONS, &mut self.classes);
        let meta = Meta {
            seq: out.frame.seq,
            captured_unix_ms: out.frame.captured_wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            stream: if out.frame.stream.is_empty() { &self.topics.stream } else { &out.frame.stream },
            width: out.frame.width,
            height: out.frame.height,
            input_size: out.input_size,
            m: out.m,
            latency_ms: (out.latency.as_secs_f64() * 1e4).round() / 10.0,
            num_classes: m.num_classes,
            mask: with_mask.then(|| crate::choice::Named::name(self.masks)),
            classes: &self.classes,
        };
        let json =
            serde_json::to_vec(&meta).map_err(|e| SinkError::Other { sink: "mqtt", msg: format!("meta JSON: {e}") })?;
        let payload = if with_mask { Some(self.encode_mask(out)?) } else { None };
        // A named stream publishes under `<prefix>/<NAME>/`, the one `[source]` under `main`.
        let named = Topics::named_index(&mut self.named, &self.prefix, &out.frame.stream);
        let topics = named.map_or(&self.topics, |i| &self.named[i]);
        self.send(&topics.meta, json);
        if let Some(payload) = payload {
            self.send(&topics.mask, payload);
        }
        Ok(())
    }
}

impl Drop for MqttSink {
    /// Publish `offline` (a clean disconnect sends no Last Will), disconnect after what is
    /// queued, and wait at most 2 s for the thread.
    fn drop(&mut self) {
        self.closing.store(true, Relaxed);
        let offline = std::mem::take(&mut self.offline);
        let _ = self.client.try_publish(&self.topics.status, QoS::AtLeastOnce, true, offline);
        let _ = self.client.try_disconnect();
        match self.done.recv_timeout(Duration::from_secs(2)) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                log::warn!("sink mqtt: the connection thread did not end within 2 s; leaving it behind")
            }
            _ => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_problems_name_the_key() {
        let mut p = Problems::default();
        MqttConfig::default().validate(&mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        let cfg = MqttConfig {
            host: "".into(),
            port: 0,
            qos: 2,
            masks: "jpeg".into(),
            every_n: 0,
            keepalive_s: 1,
            topic_prefix: "a/+/b".into(),
            tls: MqttTlsConfig { enabled: true, cert_file: "c.pem".into(), ..Default::default() },
            ..Default::default()
        };
        cfg.validate(&mut p);
        let keys: Vec<_> = p.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "[sink.mqtt] host",
                "[sink.mqtt] port",
                "[sink.mqtt] qos",
                "[sink.mqtt] masks",
                "[sink.mqtt] every_n",
                "[sink.mqtt] keepalive_s",
                "[sink.mqtt] topic_prefix",
                "[sink.mqtt] tls.ca_file",
                "[sink.mqtt] tls.key_file"
            ]
        );
        assert_eq!(p.0[3].msg, "\"jpeg\" is not \"png\", \"rle\" or \"none\"");
    }

    #[test]
    fn topics_follow_the_prefix_and_stream() {
        let t = Topics::new("ailurus/cam1", "main");
        assert_eq!(t.meta, "ailurus/cam1/main/meta");
        assert_eq!(t.mask, "ailurus/cam1/main/mask");
        assert_eq!(t.status, "ailurus/cam1/status");
        assert_eq!(t.set_result, "ailurus/cam1/set/result");
    }

    #[test]
    fn credentials_file_is_two_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cred");
        std::fs::write(&f, "dev1\ns3cret\n").unwrap();
        assert_eq!(credentials(&f).unwrap(), ("dev1".into(), "s3cret".into()));
        std::fs::write(&f, "dev1\n").unwrap();
        let e = credentials(&f).unwrap_err().to_string();
        assert!(e.starts_with("[sink.mqtt] credentials: "), "{e}");
        let e = credentials(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.starts_with("[sink.mqtt] credentials: ") && e.contains("missing"), "{e}");
    }

    #[test]
    fn stats_render_prometheus_families() {
        let s = MqttStats { broker: "127.0.0.1:1883".into(), ..Default::default() };
        s.dropped_full.fetch_add(3, Relaxed);
        let text = s.prometheus();
        assert!(text.contains("ailurus_mqtt_connected{broker=\"127.0.0.1:1883\"} 0\n"), "{text}");
        assert!(text.contains("ailurus_mqtt_messages_dropped_total{reason=\"queue_full\"} 3\n"), "{text}");
        assert!(text.contains("ailurus_mqtt_set_requests_total{result=\"rejected\"} 0\n"), "{text}");
        assert_eq!(s.health(), Health::Ok);
    }
}
