//! Sinks: where masks go (files, UNIX socket, HTTP preview, MQTT broker).
//!
//! Owns the `Sink` trait, its implementations and their config. A sink never blocks inference:
//! the pipeline hands each sink its own bounded queue, and a slow sink drops (and counts) its
//! own frames. Inside a sink, `publish` must stay cheap and must never wait on a consumer
//! (a socket client, a browser): consumers are served from the sink's own threads.
//!
//! Rebuilding sinks (on a config reload): drop the old `Vec<Box<dyn Sink>>` first, then build
//! the new one. Dropping a socket or http sink stops its threads, removes the socket file and
//! releases the port, so the new sink can bind the same address. Dropping the mqtt sink
//! publishes its `offline` status and disconnects (waiting at most 2 s for its thread).

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::frame::{Frame, Mask};
use crate::problems::{Problem, Problems};
use crate::reduce::Partition;
use crate::status::{Board, StatusProvider};

pub mod clusters;
pub mod files;
pub mod history;
pub mod http;
pub mod mqtt;
pub mod render;
pub mod socket;

/// Everything a sink may publish about one processed frame.
#[derive(Debug, Clone)]
pub struct Output {
    pub frame: Arc<Frame>,
    pub mask: Arc<Mask>,
    /// Tokens the middle blocks ran on (M; equal to N without reduction).
    pub m: usize,
    /// Input side the model ran at.
    pub input_size: u32,
    /// Capture-to-mask latency.
    pub latency: std::time::Duration,
    /// The token partition at the cut (for the cluster view), or None when the frame ran
    /// unreduced (M = N) or the engine keeps none.
    pub partition: Option<Arc<Partition>>,
    /// The latency budget target when the frame was published, in ms (0: no budget).
    pub target_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {path}: {source}")]
    Io {
        sink: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink}: {msg}")]
    Other { sink: &'static str, msg: String },
    #[error("sink {sink}: {path}: {source}")]
    Encode {
        sink: &'static str,
        path: String,
        #[source]
        source: image::ImageError,
    },
    /// A file a key names cannot be read (`[sink.mqtt] credentials: /etc/x: No such file`).
    #[error("[sink.{sink}] {key}: {path}: {source}")]
    KeyFile {
        sink: &'static str,
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A key's value cannot be used at start-up (an environment check, after validation).
    #[error("[sink.{sink}] {key}: {msg}")]
    Key { sink: &'static str, key: &'static str, msg: String },
    #[error("sink {sink}: {addr}: {source}")]
    Server {
        sink: &'static str,
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A consumer of segmentation results.
pub trait Sink: Send {
    fn name(&self) -> &'static str;
    fn publish(&mut self, out: &Output) -> Result<(), SinkError>;
}

/// `[sink.*]`: every sink's config; several can be enabled at once.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub files: files::FilesConfig,
    pub socket: socket::SocketConfig,
    pub http: http::HttpConfig,
    pub mqtt: mqtt::MqttConfig,
}

impl SinksConfig {
    pub fn validate(&self, p: &mut Problems) {
        self.files.validate(p);
        self.socket.validate(p);
        self.http.validate(p);
        self.mqtt.validate(p);
    }
}

/// What sinks may need from the rest of the runtime (built once by the pipeline).
#[derive(Clone, Default)]
pub struct SinkContext {
    /// Metrics and health for the http sink's `/metrics` and `/healthz`. Without one, the http
    /// sink reports only its own counters and judges health by its own last published frame.
    pub status: Option<Arc<dyn StatusProvider>>,
    /// Where a sink lists its own status (the MQTT broker connection) for `/metrics`.
    pub board: Option<Arc<Board>>,
    /// Where remote control requests go (`[sink.mqtt]`'s `<prefix>/set`). Without one, such
    /// requests are answered "not available".
    pub control: Option<crossbeam_channel::Sender<ControlRequest>>,
    /// What this runtime is (version, model, config summary), for a sink that announces it
    /// (the MQTT `online` status). Null when the caller gives none.
    pub about: serde_json::Value,
    /// The names of the `[streams.NAME]` sources, in index order; empty for the one `[source]`.
    pub streams: Vec<String>,
}

/// A remote request to change the live knobs (budget, reducer), as a JSON object. The sink
/// cannot apply it (the config sits above the sinks): the command that owns the pipeline takes
/// it from [`SinkContext::control`], applies it the way a SIGHUP reload is applied, and
/// answers with [`ControlRequest::respond`].
pub struct ControlRequest {
    /// Where it came from, for logs (`mqtt ailurus/cam1/set`).
    pub origin: String,
    pub body: serde_json::Value,
    reply: Box<dyn FnOnce(ControlOutcome) + Send>,
}

impl ControlRequest {
    pub fn new(origin: String, body: serde_json::Value, reply: impl FnOnce(ControlOutcome) + Send + 'static) -> Self {
        ControlRequest { origin, body, reply: Box::new(reply) }
    }

    /// Answer the request (e.g. publish the result); must not block.
    pub fn respond(self, outcome: ControlOutcome) {
        (self.reply)(outcome)
    }
}

/// What became of a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum ControlOutcome {
    /// Validated and handed to the reload path; `changed` names the sections (`budget`, `reduce`).
    Applied { changed: Vec<String> },
    /// Not applied: every problem, each naming its key.
    Rejected { problems: Vec<Problem> },
}

/// Build every enabled sink, in a fixed order: files, socket, http, mqtt.
pub fn build_all(cfg: &SinksConfig, base: &Path, ctx: &SinkContext) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if cfg.files.enabled {
        sinks.push(Box::new(files::FilesSink::build(&cfg.files, base)?));
    }
    if cfg.socket.enabled {
        sinks.push(Box::new(socket::SocketSink::build(&cfg.socket, base)?));
    }
    if cfg.http.enabled {
        sinks.push(Box::new(http::HttpSink::build(&cfg.http, ctx.status.clone())?));
    }
    if cfg.mqtt.enabled {
        sinks.push(Box::new(mqtt::MqttSink::build(&cfg.mqtt, base, ctx)?));
    }
    Ok(sinks)
}
