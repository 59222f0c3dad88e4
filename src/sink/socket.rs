//! `socket` sink: streams every mask to the clients of a UNIX-domain stream socket.
//!
//! Wire format (all integers little-endian), one message per mask:
//!
//! | offset | type    | field                                                        |
//! |-------:|---------|--------------------------------------------------------------|
//! |      0 | [u8; 4] | magic `AILM`                                                 |
//! |      4 | u16     | version (1)                                                  |
//! |      6 | u16     | header length in bytes (48); skip any bytes past the fields you know |
//! |      8 | u64     | frame sequence number (gaps = frames not sent to this client)|
//! |     16 | u64     | capture time, microseconds since the UNIX epoch              |
//! |     24 | u32     | width                                                        |
//! |     28 | u32     | height                                                       |
//! |     32 | u32     | class count (2 for saliency: 0 background, 1 salient)        |
//! |     36 | u32     | M, the tokens the reduced blocks ran on                      |
//! |     40 | u32     | capture-to-mask latency, microseconds                        |
//! |     44 | u32     | payload length in bytes (= width * height)                   |
//! |     48 | [u8; 32]| only for a named stream (`[streams.NAME]`, header length 80): the stream name, UTF-8, NUL-padded |
//! | header length | u8 * n | class id per pixel, row-major                           |
//!
//! `tools/socket_client.py` is a documented reader (numpy). Each client has a writer thread
//! with a small queue, and a watcher thread that notices when it hangs up. When the queue is
//! full the client skips frames (counted), and a client whose socket stays unwritable for
//! `write_timeout_ms` is disconnected. `publish` never waits on a client. Owns the socket
//! file: a stale one is replaced, a live one (another process listening) is an error, and the
//! file is removed when the sink is dropped.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};
use serde::Deserialize;

use super::{Output, Sink, SinkError};
use crate::problems::Problems;

pub const MAGIC: [u8; 4] = *b"AILM";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 48;
/// The header of a named stream's mask: `HEADER_LEN` plus the 32-byte stream name.
pub const NAMED_HEADER_LEN: usize = HEADER_LEN + STREAM_NAME_LEN;
/// Bytes of the stream name field (names are at most 32 bytes: `[streams.NAME]`).
pub const STREAM_NAME_LEN: usize = 32;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_PATH_LEN: usize = 107;

/// `[sink.socket]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    pub enabled: bool,
    /// Socket file (its folder is created if missing). Relative paths resolve against the
    /// current directory.
    pub path: PathBuf,
    /// File mode of the socket (who may connect), e.g. 0o660.
    pub mode: u32,
    /// Clients beyond this many are refused (accepted, then closed).
    pub max_clients: usize,
    /// Masks queued per client before that client starts skipping frames.
    pub queue: usize,
    /// A client whose socket accepts no bytes for this long is disconnected.
    pub write_timeout_ms: u64,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            enabled: false,
            path: "/run/ailurus/masks.sock".into(),
            mode: 0o660,
            max_clients: 8,
            queue: 2,
            write_timeout_ms: 1000,
        }
    }
}

impl SocketConfig {
    pub fn validate(&self, p: &mut Problems) {
        let s = "sink.socket";
        let len = self.path.as_os_str().len();
        p.check(len > 0, s, "path", || "must not be empty".into());
        p.check(len <= MAX_PATH_LEN, s, "path", || {
            format!("{:?} is {len} bytes, longer than the UNIX socket limit of {MAX_PATH_LEN}", self.path)
        });
        p.check(self.mode <= 0o777, s, "mode", || format!("{:#o} is not a file mode (0o000..=0o777)", self.mode));
        p.check(self.max_clients >= 1, s, "max_clients", || "must be >= 1".into());
        p.check(self.queue >= 1, s, "queue", || "must be >= 1".into());
        p.check(self.write_timeout_ms >= 1, s, "write_timeout_ms", || "must be >= 1".into());
    }
}

/// Counters of a socket sink (monotonic since it was built).
#[derive(Debug, Default)]
pub struct SocketStats {
    /// Masks queued to a client (one per client per mask).
    pub sent: AtomicU64,
    /// Masks a client skipped because its queue was full.
    pub skipped: AtomicU64,
    /// Clients accepted.
    pub connected: AtomicU64,
    /// Clients disconnected for being too slow, or gone.
    pub disconnected: AtomicU64,
    /// Clients refused because `max_clients` were connected.
    pub refused: AtomicU64,
}

struct Client {
    /// None once closed for sending (the writer then drains what is queued and ends).
    tx: Option<Sender<Arc<Vec<u8>>>>,
    alive: Arc<AtomicBool>,
    stream: UnixStream,
    writer: JoinHandle<()>,
    /// Waits for the client to hang up (clients send nothing), so a gone client frees its
    /// slot at once instead of at the next failed write.
    watcher: JoinHandle<()>,
}

impl Client {
    /// Close the connection now and wait for both threads.
    fn close(mut self) {
        // Unblocks a writer stuck on a client that does not read, and the watcher's read;
        // closing `tx` ends the writer's loop.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.tx = None;
        let _ = self.writer.join();
        let _ = self.watcher.join();
    }
}

/// Let every client's writer send what is queued (until `deadline`), then close them all.
fn drain_and_close(mut clients: Vec<Client>, deadline: Instant) {
    for c in &mut clients {
        c.tx = None;
    }
    while Instant::now() < deadline && clients.iter().any(|c| !c.writer.is_finished()) {
        std::thread::sleep(Duration::from_millis(1));
    }
    for c in clients {
        c.close();
    }
}

struct Shared {
    clients: Mutex<Vec<Client>>,
    stop: AtomicBool,
    stats: SocketStats,
}

pub struct SocketSink {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    /// Message buffers, reused once every client has written them.
    pool: Vec<Arc<Vec<u8>>>,
    pool_cap: usize,
    write_timeout: Duration,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io { sink: "socket", path: path.display().to_string(), source }
}

impl SocketSink {
    pub fn build(cfg: &SocketConfig, base: &Path) -> Result<SocketSink, SinkError> {
        let path = if cfg.path.is_absolute() { cfg.path.clone() } else { base.join(&cfg.path) };
        let listener = bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(cfg.mode)).map_err(io_err(&path))?;
        let shared = Arc::new(Shared {
            clients: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            stats: SocketStats::default(),
        });
        let accept = {
            let (shared, cfg) = (shared.clone(), cfg.clone());
            std::thread::Builder::new()
                .name("sink-socket-accept".into())
                .spawn(move || accept_loop(listener, shared, cfg))
                .map_err(io_err(&path))?
        };
        log::info!("sink socket: listening on {}", path.display());
        Ok(SocketSink {
            path,
            shared,
            accept: Some(accept),
            pool: Vec::new(),
            pool_cap: cfg.max_clients * (cfg.queue + 1) + 2,
            write_timeout: Duration::from_millis(cfg.write_timeout_ms),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        let mut clients = lock(&self.shared.clients);
        reap(&mut clients, &self.shared.stats);
        clients.len()
    }

    pub fn stats(&self) -> &SocketStats {
        &self.shared.stats
    }

    /// A free message buffer (all earlier readers done with it), or a new one.
    fn take_buffer(&mut self) -> Arc<Vec<u8>> {
        if let Some(i) = self.pool.iter().position(|b| Arc::strong_count(b) == 1) {
            return self.pool.swap_remove(i);
        }
        Arc::new(Vec::new())
    }
}

/// Bind `path`, replacing a stale socket file; refuse when another process is listening there.
fn bind(path: &Path) -> Result<UnixListener, SinkError> {
    let err = io_err(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(&err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SinkError::Other {
                sink: "socket",
                msg: format!("{}: exists and is not a socket", path.display()),
            })
        }
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(SinkError::Other {
                    sink: "socket",
                    msg: format!("{}: another process is listening on this socket", path.display()),
                });
            }
            std::fs::remove_file(path).map_err(&err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forget clients whose writer thread has ended.
fn reap(clients: &mut Vec<Client>, stats: &SocketStats) {
    let mut i = 0;
    while i < clients.len() {
        if clients[i].alive.load(Ordering::Acquire) {
            i += 1;
        } else {
            clients.swap_remove(i).close();
            stats.disconnected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>, cfg: SocketConfig) {
    let timeout = Duration::from_millis(cfg.write_timeout_ms);
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("sink socket: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let mut clients = lock(&shared.clients);
        reap(&mut clients, &shared.stats);
        if clients.len() >= cfg.max_clients {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            log::warn!("sink socket: refusing a client: {} already connected (max_clients)", clients.len());
            continue; // dropping `stream` closes it
        }
        match spawn_client(stream, timeout, cfg.queue, next_id) {
            Ok(c) => {
                clients.push(c);
                shared.stats.connected.fetch_add(1, Ordering::Relaxed);
                next_id += 1;
            }
            Err(e) => log::warn!("sink socket: cannot serve a client: {e}"),
        }
    }
}

fn spawn_client(stream: UnixStream, timeout: Duration, queue: usize, id: u64) -> std::io::Result<Client> {
    stream.set_write_timeout(Some(timeout))?;
    let (tx, rx) = crossbeam_channel::bounded::<Arc<Vec<u8>>>(queue);
    let alive = Arc::new(AtomicBool::new(true));
    let (mut w, alive_w) = (stream.try_clone()?, alive.clone());
    let writer = std::thread::Builder::new().name(format!("sink-socket-{id}")).spawn(move || {
        for msg in rx.iter() {
            if let Err(e) = w.write_all(&msg) {
                log::info!("sink socket: client {id} disconnected: {e}");
                break;
            }
        }
        let _ = w.shutdown(std::net::Shutdown::Both);
        alive_w.store(false, Ordering::Release);
    })?;
    let (mut r, alive_r) = (stream.try_clone()?, alive.clone());
    let watcher = std::thread::Builder::new().name(format!("sink-socket-{id}-hup")).spawn(move || {
        let mut sink = [0u8; 256];
        // Anything a client sends is ignored; end of stream or an error means it is gone.
        while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
        let _ = r.shutdown(std::net::Shutdown::Both);
        alive_r.store(false, Ordering::Release);
    });
    let watcher = match watcher {
        Ok(t) => t,
        Err(e) => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            drop(tx);
            let _ = writer.join();
            return Err(e);
        }
    };
    Ok(Client { tx: Some(tx), alive, stream, writer, watcher })
}

/// Serialise one mask into `buf` (header + class ids).
pub fn encode_message(out: &Output, buf: &mut Vec<u8>) {
    let mask = &out.mask;
    let captured_us = out.frame.captured_wall.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let sat32 = |v: u128| v.min(u32::MAX as u128) as u32;
    buf.clear();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    let stream = out.frame.stream.as_bytes();
    let header_len = if stream.is_empty() { HEADER_LEN } else { NAMED_HEADER_LEN };
    buf.extend_from_slice(&(header_len as u16).to_le_bytes());
    buf.extend_from_slice(&out.frame.seq.to_le_bytes());
    buf.extend_from_slice(&captured_us.to_le_bytes());
    buf.extend_from_slice(&mask.width.to_le_bytes());
    buf.extend_from_slice(&mask.height.to_le_bytes());
    buf.extend_from_slice(&mask.num_classes.to_le_bytes());
    buf.extend_from_slice(&sat32(out.m as u128).to_le_bytes());
    buf.extend_from_slice(&sat32(out.latency.as_micros()).to_le_bytes());
    buf.extend_from_slice(&sat32(mask.classes.len() as u128).to_le_bytes());
    if !stream.is_empty() {
        let name = &stream[..stream.len().min(STREAM_NAME_LEN)];
        buf.extend_from_slice(name);
        buf.resize(NAMED_HEADER_LEN, 0);
    }
    debug_assert_eq!(buf.len(), header_len);
    buf.extend_from_slice(&mask.classes);
}

impl Sink for SocketSink {
    fn name(&self) -> &'static str {
        "socket"
    }

    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        let mut clients = lock(&self.shared.clients);
        reap(&mut clients, &self.shared.stats);
        if clients.is_empty() {
            return Ok(());
        }
        drop(clients);
        let mut msg = self.take_buffer();
        encode_message(out, Arc::get_mut(&mut msg).expect("a pooled buffer has no other owner"));
        let clients = lock(&self.shared.clients);
        let stats = &self.shared.stats;
        for c in clients.iter() {
            let Some(tx) = &c.tx else { continue };
            match tx.try_send(msg.clone()) {
                Ok(()) => stats.sent.fetch_add(1, Ordering::Relaxed),
                Err(TrySendError::Full(_)) => stats.skipped.fetch_add(1, Ordering::Relaxed),
                Err(TrySendError::Disconnected(_)) => 0, // reaped next time
            };
        }
        drop(clients);
        if self.pool.len() < self.pool_cap {
            self.pool.push(msg);
        }
        Ok(())
    }
}

impl Drop for SocketSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wake the accept loop, which then sees `stop`. If that fails (the file was removed
        // under us) the accept thread is left behind rather than waited for forever.
        if let (Ok(_), Some(t)) = (UnixStream::connect(&self.path), self.accept.take()) {
            let _ = t.join();
        }
        // Masks already queued still reach their clients (a drain at shutdown), for at most
        // a second (or the write timeout, if shorter).
        let clients = std::mem::take(&mut *lock(&self.shared.clients));
        let drain = self.write_timeout.min(Duration::from_secs(1));
        drain_and_close(clients, Instant::now() + drain);
        let _ = std::fs::remove_file(&self.path);
    }
}
