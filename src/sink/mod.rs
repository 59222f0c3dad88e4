//! Sinks: where masks go (files, UNIX socket, HTTP preview).
//!
//! Owns the `Sink` trait, its implementations and their config. A sink never blocks inference:
//! the pipeline hands each sink its own bounded queue, and a slow sink drops (and counts) its
//! own frames. Inside a sink, `publish` must stay cheap and must never wait on a consumer
//! (a socket client, a browser): consumers are served from the sink's own threads.
//!
//! Rebuilding sinks (on a config reload): drop the old `Vec<Box<dyn Sink>>` first, then build
//! the new one. Dropping a socket or http sink stops its threads, removes the socket file and
//! releases the port, so the new sink can bind the same address.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::frame::{Frame, Mask};
use crate::problems::Problems;
use crate::status::StatusProvider;

pub mod files;
pub mod http;
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
}

impl SinksConfig {
    pub fn validate(&self, p: &mut Problems) {
        self.files.validate(p);
        self.socket.validate(p);
        self.http.validate(p);
    }
}

/// What sinks may need from the rest of the runtime (built once by the pipeline).
#[derive(Clone, Default)]
pub struct SinkContext {
    /// Metrics and health for the http sink's `/metrics` and `/healthz`. Without one, the http
    /// sink reports only its own counters and judges health by its own last published frame.
    pub status: Option<Arc<dyn StatusProvider>>,
}

/// Build every enabled sink, in a fixed order: files, socket, http.
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
    Ok(sinks)
}
