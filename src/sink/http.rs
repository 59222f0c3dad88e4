//! `http` sink: a live preview page, the latest images, Prometheus metrics and a health check.
//!
//! Routes (GET or HEAD):
//! - `/`             a small page that shows the latest frame with the mask overlay,
//!   refreshed every `refresh_ms` (it polls `/latest.json` and loads a new JPEG only when the
//!   frame changed)
//! - `/overlay.jpg`  the latest frame with the mask blended over it
//! - `/frame.jpg`    the latest frame
//! - `/mask.png`     the latest mask, the same PNG as the `files` sink writes
//! - `/clusters.png` the latest frame's token partition (`clusters.rs`); 404 with the reason
//!   for a frame that ran unreduced
//! - `/latest.json`  sequence number, size, M, input size, latency and capture time;
//!   `?after=SEQ` waits (long poll, at most 2 s) until a frame other than SEQ is there
//! - `/history.json` one point per published frame over the last `history_s` (latency, budget
//!   target, M, N, input size, drops; `history.rs`); `?after=GEN` only the newer ones
//! - `/streams.json` the streams that have published and their paths: every per-stream route
//!   (`/`, the images, `latest.json`, `history.json`) is also served under `/streams/NAME/...`
//!   (`/s/NAME/...` for short) for one named stream (`[streams.NAME]`; a single `[source]` is
//!   `default`); the unprefixed routes show the latest frame of any stream
//! - `/metrics`      Prometheus text: the runtime's (from a [`StatusProvider`]) and this sink's
//! - `/healthz`      200 `ok`, or 503 with the reason (`camera down`, `inference stuck: ...`)
//!
//! The server runs on its own threads (`threads` request workers plus tiny_http's connection
//! threads). `publish` only swaps in the latest `Output` (a few `Arc` clones); images are
//! encoded on demand by the request workers, at most once per frame and kind, so an unwatched
//! preview costs nothing. Binds to 127.0.0.1 by default: the server has no authentication and
//! a client that stops reading holds one worker until it goes away.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Deserialize;

use super::history::History;
use super::{Output, Sink, SinkError};
use crate::problems::Problems;
pub use crate::status::{Health, StatusProvider};
use encode::{encode, Kind};
use page::{streams_json, INDEX_HTML, PAGE_CSP};

mod encode;
mod page;

/// `[sink.http]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Address to listen on. 127.0.0.1 keeps the preview on this machine; 0.0.0.0 exposes it.
    pub address: String,
    /// TCP port (0 = any free port, logged at start).
    pub port: u32,
    /// Request worker threads.
    pub threads: usize,
    /// How often the preview page polls for a new frame, in milliseconds.
    pub refresh_ms: u64,
    /// JPEG quality of `/frame.jpg` and `/overlay.jpg` (1..=100).
    pub jpeg_quality: u8,
    /// Without a status provider, `/healthz` reports 503 when no frame came for this long.
    pub stale_after_s: f64,
    /// Seconds of per-frame points `/history.json` keeps (at most 60 a second).
    pub history_s: f64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: false,
            address: "127.0.0.1".into(),
            port: 8080,
            threads: 4,
            refresh_ms: 500,
            jpeg_quality: 80,
            stale_after_s: 10.0,
            history_s: 300.0,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self, p: &mut Problems) {
        let s = "sink.http";
        p.check(self.address.parse::<IpAddr>().is_ok(), s, "address", || {
            format!("{:?} is not an IP address", self.address)
        });
        p.check(self.port <= 65535, s, "port", || format!("{} is not a port", self.port));
        p.check((1..=64).contains(&self.threads), s, "threads", || format!("{} is not in 1..=64", self.threads));
        p.check(self.refresh_ms >= 50, s, "refresh_ms", || format!("{} must be >= 50", self.refresh_ms));
        p.check((1..=100).contains(&self.jpeg_quality), s, "jpeg_quality", || {
            format!("{} is not in 1..=100", self.jpeg_quality)
        });
        p.check(self.stale_after_s > 0.0 && self.stale_after_s.is_finite(), s, "stale_after_s", || {
            format!("{} must be > 0", self.stale_after_s)
        });
        p.check(self.history_s > 0.0 && self.history_s <= 3600.0, s, "history_s", || {
            format!("{} is not in (0, 3600]", self.history_s)
        });
    }

    /// The socket address to bind (after `validate`).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.address.parse().ok()?;
        Some(SocketAddr::new(ip, u16::try_from(self.port).ok()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Index,
    Overlay,
    Frame,
    Mask,
    Clusters,
    Latest,
    History,
    Streams,
    Metrics,
    Healthz,
    Other,
}

const ROUTES: [(Route, &str); 11] = [
    (Route::Index, "/"),
    (Route::Overlay, "/overlay.jpg"),
    (Route::Frame, "/frame.jpg"),
    (Route::Mask, "/mask.png"),
    (Route::Clusters, "/clusters.png"),
    (Route::Latest, "/latest.json"),
    (Route::History, "/history.json"),
    (Route::Streams, "/streams.json"),
    (Route::Metrics, "/metrics"),
    (Route::Healthz, "/healthz"),
    (Route::Other, "other"),
];

/// The routes served per stream, also under `/s/NAME/` (the others are the process's).
const PER_STREAM: [Route; 7] =
    [Route::Overlay, Route::Frame, Route::Mask, Route::Clusters, Route::Latest, Route::History, Route::Index];

/// The name a single `[source]`'s frames are shown under (`/streams/default/...`).
pub const STREAM: &str = "default";

/// The name the routes show `stream` under (a frame of a single `[source]` has none).
fn shown_name(stream: &str) -> &str {
    if stream.is_empty() {
        STREAM
    } else {
        stream
    }
}

impl Route {
    /// The route of `url`, and the stream its `/streams/NAME` or `/s/NAME` prefix names (None:
    /// unprefixed).
    fn parse(url: &str) -> (Route, Option<&str>) {
        let path = url.split(['?', '#']).next().unwrap_or("");
        let (stream, path) = match path.strip_prefix("/streams/").or_else(|| path.strip_prefix("/s/")) {
            Some(rest) => {
                let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
                (Some(name), if tail.is_empty() { "/".to_string() } else { format!("/{tail}") })
            }
            None => (None, path.to_string()),
        };
        let route = ROUTES.iter().find(|(r, p)| *r != Route::Other && *p == path).map_or(Route::Other, |(r, _)| *r);
        match stream {
            Some(_) if !PER_STREAM.contains(&route) => (Route::Other, stream),
            _ => (route, stream),
        }
    }
}

type Cached = Option<(u64, Arc<Vec<u8>>)>;

struct PerStream {
    name: Arc<str>,
    latest: (u64, Output),
    history: History,
}

struct Shared {
    /// The latest output and its publish count (the cache key: sequence numbers may restart).
    latest: Mutex<Option<(u64, Output)>>,
    /// Signalled on every publish (and on close), for long polls.
    changed: Condvar,
    /// Long polls waiting now, and how many may (one worker always stays free).
    waiting: AtomicUsize,
    max_waiting: usize,
    closing: AtomicBool,
    last_publish: Mutex<Option<Instant>>,
    published: AtomicU64,
    cache: [Mutex<Cached>; 4],
    history: Mutex<History>,
    /// Per stream, in order of first publish: its latest output (with its publish count) and
    /// its history. Locked after `latest` where both are held.
    streams: Mutex<Vec<PerStream>>,
    history_window: (Duration, usize),
    encode_errors: AtomicU64,
    requests: [AtomicU64; ROUTES.len()],
    status: Option<Arc<dyn StatusProvider>>,
    page: String,
    jpeg_quality: u8,
    stale_after: Duration,
    started: Instant,
}

pub struct HttpSink {
    shared: Arc<Shared>,
    server: Option<Arc<tiny_http::Server>>,
    workers: Vec<JoinHandle<()>>,
    /// Disconnected once every worker has ended.
    done: crossbeam_channel::Receiver<()>,
    addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bind, retrying for a moment while a previous server on the same address shuts down.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

impl HttpSink {
    pub fn build(cfg: &HttpConfig, status: Option<Arc<dyn StatusProvider>>) -> Result<HttpSink, SinkError> {
        let want = cfg.socket_addr().ok_or_else(|| SinkError::Other {
            sink: "http",
            msg: format!("{}:{} is not a socket address", cfg.address, cfg.port),
        })?;
        let io = |source| SinkError::Io { sink: "http", path: want.to_string(), source };
        let listener = bind(want).map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let server = tiny_http::Server::from_listener(listener, None).map_err(|source| SinkError::Server {
            sink: "http",
            addr: addr.to_string(),
            source,
        })?;
        let server = Arc::new(server);
        let history_window = (Duration::from_secs_f64(cfg.history_s), (cfg.history_s * 60.0).ceil() as usize);
        let shared = Arc::new(Shared {
            latest: Mutex::new(None),
            changed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            max_waiting: cfg.threads - 1,
            closing: AtomicBool::new(false),
            last_publish: Mutex::new(None),
            published: AtomicU64::new(0),
            cache: Default::default(),
            history: Mutex::new(History::new(history_window.0, history_window.1)),
            streams: Mutex::new(Vec::new()),
            history_window,
            encode_errors: AtomicU64::new(0),
            requests: Default::default(),
            status,
            page: INDEX_HTML.replace("{REFRESH_MS}", &cfg.refresh_ms.to_string()),
            jpeg_quality: cfg.jpeg_quality,
            stale_after: Duration::from_secs_f64(cfg.stale_after_s),
            started: Instant::now(),
        });
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let mut workers = Vec::with_capacity(cfg.threads);
        for i in 0..cfg.threads {
            let (weak, shared, done_tx) = (Arc::downgrade(&server), shared.clone(), done_tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("sink-http-{i}"))
                .spawn(move || worker(weak, shared, done_tx))
                .map_err(io)?;
            workers.push(t);
        }
        log::info!("sink http: serving the live preview on http://{addr}/");
        Ok(HttpSink { shared, server: Some(server), workers, done, addr })
    }

    /// The address actually bound (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn worker(server: Weak<tiny_http::Server>, shared: Arc<Shared>, _done: crossbeam_channel::Sender<()>) {
    loop {
        // Hold the server only while waiting, so dropping the sink frees the port even when a
        // worker is stuck writing to a client that stopped reading.
        let Some(srv) = server.upgrade() else { return };
        let rq = srv.recv();
        drop(srv);
        match rq {
            Ok(rq) => handle(&shared, rq),
            Err(_) => return, // unblocked by drop, or the server failed
        }
    }
}

struct Bytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn reply(rq: tiny_http::Request, code: u16, content_type: &str, body: Arc<Vec<u8>>) {
    let len = body.len();
    let mut headers = vec![header("Content-Type", content_type), header("Cache-Control", "no-store")];
    if content_type.starts_with("text/html") {
        // The page works offline: it may load nothing from anywhere but this server.
        headers.push(header("Content-Security-Policy", PAGE_CSP));
    }
    // A known length is always sent as Content-Length (tiny_http would chunk bodies >= 32 KiB).
    let resp = tiny_http::Response::new(code.into(), headers, Cursor::new(Bytes(body)), Some(len), None)
        .with_chunked_threshold(usize::MAX);
    if let Err(e) = rq.respond(resp) {
        log::debug!("sink http: response not delivered: {e}");
    }
}

fn text(rq: tiny_http::Request, code: u16, body: String) {
    reply(rq, code, "text/plain; charset=utf-8", Arc::new(body.into_bytes()));
}

fn handle(shared: &Shared, rq: tiny_http::Request) {
    let (route, stream) = Route::parse(rq.url());
    let stream = stream.map(str::to_string);
    let idx = ROUTES.iter().position(|(r, _)| *r == route).unwrap_or(ROUTES.len() - 1);
    shared.requests[idx].fetch_add(1, Ordering::Relaxed);
    if !matches!(rq.method(), tiny_http::Method::Get | tiny_http::Method::Head) {
        return text(rq, 405, "only GET and HEAD\n".into());
    }
    let stream = stream.as_deref();
    if let Some(name) = stream {
        let streams = lock(&shared.streams);
        if !streams.iter().any(|p| &*p.name == name) {
            let names = streams.iter().map(|p| &*p.name).collect::<Vec<_>>().join(" ");
            drop(streams);
            return text(
                rq,
                404,
                format!("no stream {name:?} has published; streams: {names} (listed at /streams.json)\n"),
            );
        }
    }
    match route {
        Route::Index => reply(rq, 200, "text/html; charset=utf-8", Arc::new(shared.page.clone().into_bytes())),
        Route::Overlay => image(shared, rq, Kind::Overlay, stream),
        Route::Frame => image(shared, rq, Kind::Frame, stream),
        Route::Mask => image(shared, rq, Kind::Mask, stream),
        Route::Clusters => clusters(shared, rq, stream),
        Route::History => {
            let j = match stream {
                Some(name) => lock(&shared.streams)
                    .iter()
                    .find(|p| &*p.name == name)
                    .map(|p| p.history.json(name, after(rq.url())))
                    .unwrap_or_default(),
                None => lock(&shared.history).json("", after(rq.url())),
            };
            reply(rq, 200, "application/json", Arc::new(j.into_bytes()))
        }
        Route::Streams => {
            let names: Vec<Arc<str>> = lock(&shared.streams).iter().map(|p| p.name.clone()).collect();
            reply(rq, 200, "application/json", Arc::new(streams_json(&names).into_bytes()))
        }
        Route::Latest => match latest_json(shared, after(rq.url()), stream) {
            Some(j) => reply(rq, 200, "application/json", Arc::new(j.into_bytes())),
            None => text(rq, 503, "no frame yet\n".into()),
        },
        Route::Metrics => {
            reply(rq, 200, "text/plain; version=0.0.4; charset=utf-8", Arc::new(metrics(shared).into_bytes()))
        }
        Route::Healthz => match health(shared) {
            Health::Ok => text(rq, 200, "ok\n".into()),
            Health::Unavailable(reason) => text(rq, 503, format!("{reason}\n")),
        },
        Route::Other => text(
            rq,
            404,
            "not found; try / /overlay.jpg /frame.jpg /mask.png /clusters.png /latest.json /history.json \
             /streams.json /metrics /healthz (per stream also /streams/NAME/...)\n"
                .into(),
        ),
    }
}

/// `/clusters.png`: the partition of the latest frame, or 404 saying it ran unreduced.
fn clusters(shared: &Shared, rq: tiny_http::Request, stream: Option<&str>) {
    let latest = latest_of(shared, stream).map(|(_, o)| (o.frame.seq, o.m, o.input_size, o.partition.is_some()));
    match latest {
        Some((seq, m, size, false)) => text(
            rq,
            404,
            format!(
                "frame {seq} ran unreduced (M = N = {m} tokens at {size}px): no clusters to draw; \
                 the cluster view exists for reduced frames only\n"
            ),
        ),
        _ => image(shared, rq, Kind::Clusters, stream),
    }
}

/// The latest output (with its publish count) of `stream`, or of any stream.
fn latest_of(shared: &Shared, stream: Option<&str>) -> Option<(u64, Output)> {
    match stream {
        None => lock(&shared.latest).clone(),
        Some(name) => lock(&shared.streams).iter().find(|p| &*p.name == name).map(|p| p.latest.clone()),
    }
}

fn image(shared: &Shared, rq: tiny_http::Request, kind: Kind, stream: Option<&str>) {
    let content_type = if matches!(kind, Kind::Mask | Kind::Clusters) { "image/png" } else { "image/jpeg" };
    match encoded(shared, kind, stream) {
        Ok(Some(bytes)) => reply(rq, 200, content_type, bytes),
        Ok(None) => text(rq, 503, "no frame yet\n".into()),
        Err(e) => {
            shared.encode_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("{e}");
            text(rq, 500, format!("{e}\n"));
        }
    }
}

/// The latest image of `kind` (of `stream`, or of any), encoded at most once per published
/// frame while one stream is watched (the cache holds one frame per kind; the publish count
/// is its key, unique across streams).
fn encoded(shared: &Shared, kind: Kind, stream: Option<&str>) -> Result<Option<Arc<Vec<u8>>>, SinkError> {
    let Some((generation, out)) = latest_of(shared, stream) else {
        return Ok(None);
    };
    // Holding the slot while encoding makes concurrent requests wait for one encode.
    let mut slot = lock(&shared.cache[kind as usize]);
    if let Some((g, bytes)) = &*slot {
        if *g == generation {
            return Ok(Some(bytes.clone()));
        }
    }
    let bytes = Arc::new(encode(&out, kind, shared.jpeg_quality)?);
    *slot = Some((generation, bytes.clone()));
    Ok(Some(bytes))
}

/// `?after=N` of a URL.
fn after(url: &str) -> Option<u64> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix("after=")?.parse().ok())
}

/// Long poll: wait (at most `LONG_POLL`) until the latest frame (of `stream`, or of any) is not
/// `seen`. At most `max_waiting` requests wait at once; the others are answered at once.
fn wait_for_new(shared: &Shared, seen: u64, stream: Option<&str>) {
    if shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.max_waiting {
        shared.waiting.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let deadline = Instant::now() + LONG_POLL;
    let mut latest = lock(&shared.latest);
    let is_seen = |latest: &Option<(u64, Output)>| match stream {
        None => latest.as_ref().is_none_or(|(_, o)| o.frame.seq == seen),
        Some(name) => {
            lock(&shared.streams).iter().find(|p| &*p.name == name).is_none_or(|p| p.latest.1.frame.seq == seen)
        }
    };
    while is_seen(&latest) && !shared.closing.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        latest = shared.changed.wait_timeout(latest, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
    }
    drop(latest);
    shared.waiting.fetch_sub(1, Ordering::AcqRel);
}

const LONG_POLL: Duration = Duration::from_secs(2);

fn latest_json(shared: &Shared, after: Option<u64>, stream: Option<&str>) -> Option<String> {
    if let Some(seen) = after {
        wait_for_new(shared, seen, stream);
    }
    let (gen, out) = latest_of(shared, stream)?;
    let name = serde_json::Value::from(shown_name(&out.frame.stream));
    let captured_ms = out.frame.captured_wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    Some(format!(
        "{{\"seq\":{},\"width\":{},\"height\":{},\"num_classes\":{},\"m\":{},\"input_size\":{},\"latency_ms\":{:.1},\
         \"captured_unix_ms\":{},\"n\":{},\"reduced\":{},\"target_ms\":{:.1},\"gen\":{gen},\"stream\":{name}}}\n",
        out.frame.seq,
        out.frame.width,
        out.frame.height,
        out.mask.num_classes,
        out.m,
        out.input_size,
        out.latency.as_secs_f64() * 1e3,
        captured_ms,
        out.partition.as_ref().map_or(out.m, |p| p.n()),
        out.partition.is_some(),
        out.target_ms,
    ))
}

fn health(shared: &Shared) -> Health {
    if let Some(p) = &shared.status {
        return p.health();
    }
    let age = match *lock(&shared.last_publish) {
        Some(t) => t.elapsed(),
        None if shared.started.elapsed() < shared.stale_after => {
            return Health::Unavailable("starting: no frame yet".into())
        }
        None => shared.started.elapsed(),
    };
    if age > shared.stale_after {
        Health::Unavailable(format!("inference stuck: no frame for {}s", age.as_secs()))
    } else {
        Health::Ok
    }
}

/// The provider's metrics (if any), then this sink's own, all `ailurus_http_*`.
fn metrics(shared: &Shared) -> String {
    use std::fmt::Write;
    let mut s = shared.status.as_ref().map(|p| p.prometheus()).unwrap_or_default();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    let latest = lock(&shared.latest).clone().map(|(_, out)| out);
    let latest = latest.as_ref();
    let age = lock(&shared.last_publish).map(|t| t.elapsed().as_secs_f64());
    // (name, type, help, value); a value not known yet (no frame) is left out.
    let families = [
        ("frames_published_total", "counter", "Frames handed to the http sink.", Some(n(&shared.published))),
        ("encode_errors_total", "counter", "Images that failed to encode.", Some(n(&shared.encode_errors))),
        ("latest_seq", "gauge", "Sequence number of the latest frame.", latest.map(|o| o.frame.seq as f64)),
        ("latest_m", "gauge", "Tokens (M) the latest frame's reduced blocks ran on.", latest.map(|o| o.m as f64)),
        (
            "latest_latency_seconds",
            "gauge",
            "Capture-to-mask latency of the latest frame.",
            latest.map(|o| o.latency.as_secs_f64()),
        ),
        ("last_frame_age_seconds", "gauge", "Seconds since the latest frame was published.", age),
    ];
    for (name, kind, help, value) in families {
        if let Some(v) = value {
            let _ = write!(s, "# HELP ailurus_http_{name} {help}\n# TYPE ailurus_http_{name} {kind}\n");
            let _ = writeln!(s, "ailurus_http_{name} {v}");
        }
    }
    s.push_str("# HELP ailurus_http_requests_total HTTP requests served, by path.\n");
    s.push_str("# TYPE ailurus_http_requests_total counter\n");
    for ((_, path), c) in ROUTES.iter().zip(&shared.requests) {
        let _ = writeln!(s, "ailurus_http_requests_total{{path=\"{path}\"}} {}", n(c));
    }
    s
}

impl Sink for HttpSink {
    fn name(&self) -> &'static str {
        "http"
    }

    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        let generation = self.shared.published.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::SystemTime::now();
        lock(&self.shared.history).push(generation, out, now);
        let old_of_stream = {
            let mut streams = lock(&self.shared.streams);
            let name = shown_name(&out.frame.stream);
            match streams.iter_mut().find(|p| &*p.name == name) {
                Some(p) => {
                    p.history.push(generation, out, now);
                    Some(std::mem::replace(&mut p.latest, (generation, out.clone())))
                }
                None => {
                    let (window, capacity) = self.shared.history_window;
                    let mut history = History::new(window, capacity);
                    history.push(generation, out, now);
                    streams.push(PerStream { name: name.into(), latest: (generation, out.clone()), history });
                    None
                }
            }
        };
        drop(old_of_stream);
        let old = lock(&self.shared.latest).replace((generation, out.clone()));
        self.shared.changed.notify_all();
        *lock(&self.shared.last_publish) = Some(Instant::now());
        drop(old); // outside the lock: may free the previous frame's buffers
        Ok(())
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.shared.closing.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        // One unblock per worker: each ends on the first one it receives.
        for _ in 0..self.workers.len() {
            server.unblock();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let all_done = loop {
            match self.done.recv_deadline(deadline) {
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break true,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => break false,
                Ok(()) => {}
            }
        };
        if all_done {
            for t in self.workers.drain(..) {
                let _ = t.join();
            }
        } else {
            log::warn!("sink http: a worker is still writing to a slow client; leaving it behind");
        }
        drop(server);
        wait_port_closed(self.addr, deadline + Duration::from_secs(1));
    }
}

/// Wait (bounded) until nothing accepts connections on `addr`, so a new sink can bind it.
fn wait_port_closed(addr: SocketAddr, deadline: Instant) {
    let probe = if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr };
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&probe, Duration::from_millis(100)) {
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;
