//! `http` sink: a live preview page, the latest images, Prometheus metrics and a health check.
//!
//! Routes (GET or HEAD):
//! - `/`             a small page that shows the latest frame with the mask overlay,
//!   refreshed every `refresh_ms` (it polls `/latest.json` and loads a new JPEG only when the
//!   frame changed)
//! - `/overlay.jpg`  the latest frame with the mask blended over it
//! - `/frame.jpg`    the latest frame
//! - `/mask.png`     the latest mask, the same PNG as the `files` sink writes
//! - `/latest.json`  sequence number, size, M, input size, latency and capture time;
//!   `?after=SEQ` waits (long poll, at most 2 s) until a frame other than SEQ is there
//! - `/metrics`      Prometheus text: the runtime's (from a [`StatusProvider`]) and this sink's
//! - `/healthz`      200 `ok`, or 503 with the reason (`camera down`, `inference stuck: ...`)
//! - `/streams/NAME/latest.json`, `.../frame.jpg`, `.../overlay.jpg`, `.../mask.png`: the
//!   latest of one named stream (`[streams.NAME]`; the routes above show the latest of any)
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

use image::ImageEncoder;
use serde::Deserialize;

use super::{Output, Sink, SinkError};
use crate::problems::Problems;
pub use crate::status::{Health, StatusProvider};

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
    Latest,
    Metrics,
    Healthz,
    Other,
}

const ROUTES: [(Route, &str); 8] = [
    (Route::Index, "/"),
    (Route::Overlay, "/overlay.jpg"),
    (Route::Frame, "/frame.jpg"),
    (Route::Mask, "/mask.png"),
    (Route::Latest, "/latest.json"),
    (Route::Metrics, "/metrics"),
    (Route::Healthz, "/healthz"),
    (Route::Other, "other"),
];

impl Route {
    fn parse(url: &str) -> Route {
        let path = url.split(['?', '#']).next().unwrap_or("");
        ROUTES.iter().find(|(r, p)| *r != Route::Other && *p == path).map_or(Route::Other, |(r, _)| *r)
    }
}

/// The encoded images, cached per kind for the frame they were made from.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Frame = 0,
    Overlay = 1,
    Mask = 2,
}

type Cached = Option<(u64, Arc<Vec<u8>>)>;

struct Shared {
    /// The latest output and its publish count (the cache key: sequence numbers may restart).
    latest: Mutex<Option<(u64, Output)>>,
    /// The latest output of each named stream (`[streams.NAME]`), for `/streams/NAME/...`.
    by_stream: Mutex<Vec<Output>>,
    /// Signalled on every publish (and on close), for long polls.
    changed: Condvar,
    /// Long polls waiting now, and how many may (one worker always stays free).
    waiting: AtomicUsize,
    max_waiting: usize,
    closing: AtomicBool,
    last_publish: Mutex<Option<Instant>>,
    published: AtomicU64,
    cache: [Mutex<Cached>; 3],
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
        let shared = Arc::new(Shared {
            latest: Mutex::new(None),
            by_stream: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            max_waiting: cfg.threads - 1,
            closing: AtomicBool::new(false),
            last_publish: Mutex::new(None),
            published: AtomicU64::new(0),
            cache: Default::default(),
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
    let headers = vec![header("Content-Type", content_type), header("Cache-Control", "no-store")];
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

/// `/streams/NAME/ROUTE`: the latest output of one named stream (encoded per request).
fn stream_request(shared: &Shared, rq: tiny_http::Request, name: &str, route: &str) {
    let out = lock(&shared.by_stream).iter().find(|o| &*o.frame.stream == name).cloned();
    let Some(out) = out else {
        let names: Vec<String> = lock(&shared.by_stream).iter().map(|o| o.frame.stream.to_string()).collect();
        return text(rq, 404, format!("no stream {name:?} has published; streams: {}\n", names.join(" ")));
    };
    let kind = match route.split(['?', '#']).next().unwrap_or("") {
        "latest.json" => return reply(rq, 200, "application/json", Arc::new(output_json(&out).into_bytes())),
        "frame.jpg" => Kind::Frame,
        "overlay.jpg" => Kind::Overlay,
        "mask.png" => Kind::Mask,
        _ => return text(rq, 404, "not found; try latest.json frame.jpg overlay.jpg mask.png\n".into()),
    };
    match encode(&out, kind, shared.jpeg_quality) {
        Ok(b) => reply(rq, 200, if matches!(kind, Kind::Mask) { "image/png" } else { "image/jpeg" }, Arc::new(b)),
        Err(e) => text(rq, 500, format!("{e}\n")),
    }
}

fn handle(shared: &Shared, rq: tiny_http::Request) {
    if let Some((name, route)) = rq.url().strip_prefix("/streams/").and_then(|r| r.split_once('/')) {
        let (name, route) = (name.to_string(), route.to_string());
        return stream_request(shared, rq, &name, &route);
    }
    let route = Route::parse(rq.url());
    let idx = ROUTES.iter().position(|(r, _)| *r == route).unwrap_or(ROUTES.len() - 1);
    shared.requests[idx].fetch_add(1, Ordering::Relaxed);
    if !matches!(rq.method(), tiny_http::Method::Get | tiny_http::Method::Head) {
        return text(rq, 405, "only GET and HEAD\n".into());
    }
    match route {
        Route::Index => reply(rq, 200, "text/html; charset=utf-8", Arc::new(shared.page.clone().into_bytes())),
        Route::Overlay => image(shared, rq, Kind::Overlay),
        Route::Frame => image(shared, rq, Kind::Frame),
        Route::Mask => image(shared, rq, Kind::Mask),
        Route::Latest => match latest_json(shared, after(rq.url())) {
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
        Route::Other => {
            text(rq, 404, "not found; try / /overlay.jpg /frame.jpg /mask.png /latest.json /metrics /healthz\n".into())
        }
    }
}

fn image(shared: &Shared, rq: tiny_http::Request, kind: Kind) {
    let content_type = if matches!(kind, Kind::Mask) { "image/png" } else { "image/jpeg" };
    match encoded(shared, kind) {
        Ok(Some(bytes)) => reply(rq, 200, content_type, bytes),
        Ok(None) => text(rq, 503, "no frame yet\n".into()),
        Err(e) => {
            shared.encode_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("{e}");
            text(rq, 500, format!("{e}\n"));
        }
    }
}

/// The latest image of `kind`, encoded at most once per published frame.
fn encoded(shared: &Shared, kind: Kind) -> Result<Option<Arc<Vec<u8>>>, SinkError> {
    let Some((generation, out)) = lock(&shared.latest).clone() else {
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

/// Encode one image of `out`: JPEG for the frame and the overlay, PNG for the mask.
fn encode(out: &Output, kind: Kind, quality: u8) -> Result<Vec<u8>, SinkError> {
    let mut buf = Vec::new();
    let f = &out.frame;
    let jpeg = |buf: &mut Vec<u8>, rgb: &[u8], w, h| {
        image::codecs::jpeg::JpegEncoder::new_with_quality(buf, quality).encode(
            rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
    };
    let res = match kind {
        Kind::Frame => jpeg(&mut buf, &f.rgb, f.width, f.height),
        Kind::Overlay => {
            let img = crate::sink::render::overlay(f, &out.mask);
            jpeg(&mut buf, img.as_raw(), img.width(), img.height())
        }
        Kind::Mask => {
            let png = crate::sink::render::mask_to_png(&out.mask);
            image::codecs::png::PngEncoder::new(&mut buf).write_image(
                png.as_raw(),
                png.width(),
                png.height(),
                image::ExtendedColorType::L8,
            )
        }
    };
    res.map_err(|source| SinkError::Encode { sink: "http", path: format!("{kind:?} of frame {}", f.seq), source })?;
    Ok(buf)
}

/// `?after=N` of a URL.
fn after(url: &str) -> Option<u64> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix("after=")?.parse().ok())
}

/// Long poll: wait (at most `LONG_POLL`) until the latest frame is not `seen`. At most
/// `max_waiting` requests wait at once; the others are answered at once.
fn wait_for_new(shared: &Shared, seen: u64) {
    if shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.max_waiting {
        shared.waiting.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let deadline = Instant::now() + LONG_POLL;
    let mut latest = lock(&shared.latest);
    while latest.as_ref().is_none_or(|(_, o)| o.frame.seq == seen) && !shared.closing.load(Ordering::Acquire) {
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

fn latest_json(shared: &Shared, after: Option<u64>) -> Option<String> {
    if let Some(seen) = after {
        wait_for_new(shared, seen);
    }
    let (_, out) = lock(&shared.latest).clone()?;
    Some(output_json(&out))
}

/// One output's `latest.json` (with `"stream"` for a named stream).
fn output_json(out: &Output) -> String {
    let stream =
        if out.frame.stream.is_empty() { String::new() } else { format!(",\"stream\":{:?}", &*out.frame.stream) };
    let captured_ms = out.frame.captured_wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!(
        "{{\"seq\":{},\"width\":{},\"height\":{},\"num_classes\":{},\"m\":{},\"input_size\":{},\"latency_ms\":{:.1},\"captured_unix_ms\":{}{stream}}}\n",
        out.frame.seq,
        out.frame.width,
        out.frame.height,
        out.mask.num_classes,
        out.m,
        out.input_size,
        out.latency.as_secs_f64() * 1e3,
        captured_ms
    )
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
        let old = lock(&self.shared.latest).replace((generation, out.clone()));
        if !out.frame.stream.is_empty() {
            let mut by = lock(&self.shared.by_stream);
            match by
                .iter_mut()
                .find(|o| Arc::ptr_eq(&o.frame.stream, &out.frame.stream) || o.frame.stream == out.frame.stream)
            {
                Some(o) => drop(std::mem::replace(o, out.clone())),
                None => by.push(out.clone()),
            }
        }
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

/// The preview page (`{REFRESH_MS}` is replaced at build time).
const INDEX_HTML: &str = include_str!("preview.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_ignore_the_query() {
        assert_eq!(Route::parse("/"), Route::Index);
        assert_eq!(Route::parse("/overlay.jpg?seq=12"), Route::Overlay);
        assert_eq!(Route::parse("/mask.png"), Route::Mask);
        assert_eq!(Route::parse("/metrics"), Route::Metrics);
        assert_eq!(Route::parse("/healthz?x"), Route::Healthz);
        assert_eq!(Route::parse("other"), Route::Other);
        assert_eq!(Route::parse("/nope"), Route::Other);
    }

    #[test]
    fn config_problems_name_the_key() {
        let cfg =
            HttpConfig { address: "localhost".into(), port: 80000, threads: 0, jpeg_quality: 0, ..Default::default() };
        let mut p = Problems::default();
        cfg.validate(&mut p);
        let keys: Vec<_> = p.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["[sink.http] address", "[sink.http] port", "[sink.http] threads", "[sink.http] jpeg_quality"]
        );
        assert_eq!(p.0[1].msg, "80000 is not a port");
    }
}
