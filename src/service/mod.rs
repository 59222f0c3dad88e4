//! systemd integration: sd-notify READY/WATCHDOG/STATUS/STOPPING, SIGTERM drain, SIGHUP reload,
//! and the liveness behind `/healthz`.
//!
//! Owns the process's signal handling (SIGTERM, SIGINT, SIGHUP) and the notify socket. The
//! pipeline drives it through a [`Service`] handle:
//!
//! ```text
//! let svc = Service::install(cfg.clone(), loader_for(path), ServiceOptions::default(), Notifier::from_env())?;
//! load the model ...
//! while !svc.should_stop() {
//!     if let Some(new) = svc.poll_reload() { apply reload_plan(&cfg, &new) ...; cfg = new }
//!     process a frame ...; svc.frame_done(m);    // READY=1 on the first, WATCHDOG=1, STATUS=
//!     (no frame: camera retry)  svc.heartbeat();  // WATCHDOG=1 only
//! }
//! drain the sinks, drop(svc), return Ok  ->  exit 0
//! ```
//!
//! Must not run the pipeline, touch sinks or decide what a reload changes: it delivers
//! validated configs and the pipeline applies them. A config that fails `Config::load` is
//! logged in one line and never delivered, so the old one stays in force.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::config::{Config, ConfigError};

mod notify;

use crate::status::Liveness;
pub use notify::{watchdog_from, Notifier};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("notify socket {path}: {source}")]
    NotifySocket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handlers for {signals}: {source}")]
    Signals {
        signals: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("service thread {name}: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
/// Produces a fresh, validated config on SIGHUP.
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, ConfigError> + Send>;

/// `Config::load(path)`, or the embedded default when the service runs without a file.
pub fn loader_for(path: Option<PathBuf>) -> ConfigLoader {
    match path {
        Some(p) => Box::new(move || Config::load(&p)),
        None => Box::new(Config::embedded_default),
    }
}

/// What a reloaded config changes. Everything outside `restart_needed` can be applied live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// `[sink.*]` changed: drop the old sinks, then build the new ones.
    pub sinks: bool,
    /// `[reduce]` changed (other than `cut`): rebuild the reducer / change M.
    pub reduce: bool,
    pub budget: bool,
    pub pipeline: bool,
    /// Sections or keys that only take effect after a restart (`model`, `source`, `reduce.cut`).
    pub restart_needed: Vec<&'static str>,
}

pub fn reload_plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut restart_needed = Vec::new();
    if old.model != new.model {
        restart_needed.push("model");
    }
    if old.source != new.source || old.streams != new.streams {
        restart_needed.push("source");
    }
    if old.reduce.cut != new.reduce.cut {
        restart_needed.push("reduce.cut");
    }
    let reduce_live = crate::reduce::ReduceConfig { cut: old.reduce.cut, ..new.reduce.clone() };
    ReloadPlan {
        sinks: old.sink != new.sink,
        reduce: old.reduce != reduce_live,
        budget: old.budget != new.budget,
        pipeline: old.pipeline != new.pipeline,
        restart_needed,
    }
}

/// Tunables of the service handle.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// After SIGTERM/SIGINT the pipeline has this long to drain and return; then the process
    /// exits with status 1 and a log line. A second SIGTERM/SIGINT exits at once (status 1).
    pub drain_timeout: Duration,
    /// `/healthz` says "inference stuck" after this long without a frame.
    pub stuck_after: Duration,
    /// Least time between STATUS= updates (FPS is averaged over it).
    pub status_every: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            drain_timeout: Duration::from_secs(5),
            stuck_after: Duration::from_secs(30),
            status_every: Duration::from_secs(2),
        }
    }
}

/// Outcome counts of SIGHUP reloads.
#[derive(Debug, Clone, Default)]
pub struct ReloadStats {
    pub accepted: u64,
    pub rejected: u64,
    pub last_rejection: Option<Arc<ConfigError>>,
}

struct Tick {
    ready_sent: bool,
    frames: u64,
    last_watchdog: Option<Instant>,
    window_start: Instant,
    window_frames: u64,
}

/// The handle the pipeline polls: stop flag, reloaded configs, notifications.
pub struct Service {
    notifier: Arc<Notifier>,
    opts: ServiceOptions,
    stop: Arc<AtomicBool>,
    reloads: Receiver<Config>,
    current: Arc<Mutex<Arc<Config>>>,
    stats: Arc<Mutex<ReloadStats>>,
    liveness: Arc<Liveness>,
    tick: Mutex<Tick>,
    signals: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
    /// Dropped with the service: tells a pending drain timer that the pipeline returned.
    _alive: Sender<()>,
}

/// State the signal thread works on.
struct SignalCtx {
    loader: ConfigLoader,
    notifier: Arc<Notifier>,
    stop: Arc<AtomicBool>,
    reload_tx: Sender<Config>,
    current: Arc<Mutex<Arc<Config>>>,
    stats: Arc<Mutex<ReloadStats>>,
    drain_timeout: Duration,
    alive: Receiver<()>,
}

impl Service {
    /// Install the SIGTERM/SIGINT/SIGHUP handlers and start the signal thread. `initial` is the
    /// config in force; `loader` produces the next one on SIGHUP.
    pub fn install(
        initial: Config,
        loader: ConfigLoader,
        opts: ServiceOptions,
        notifier: Notifier,
    ) -> Result<Service, ServiceError> {
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|source| ServiceError::Signals { signals: "SIGTERM, SIGINT, SIGHUP", source })?;
        let handle = signals.handle();
        let notifier = Arc::new(notifier);
        let stop = Arc::new(AtomicBool::new(false));
        let (reload_tx, reloads) = crossbeam_channel::unbounded();
        let current = Arc::new(Mutex::new(Arc::new(initial)));
        let stats = Arc::new(Mutex::new(ReloadStats::default()));
        let (alive_tx, alive_rx) = crossbeam_channel::bounded(0);
        let ctx = SignalCtx {
            loader,
            notifier: notifier.clone(),
            stop: stop.clone(),
            reload_tx,
            current: current.clone(),
            stats: stats.clone(),
            drain_timeout: opts.drain_timeout,
            alive: alive_rx,
        };
        let thread = std::thread::Builder::new()
            .name("service-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    ctx.on_signal(sig);
                }
            })
            .map_err(|source| ServiceError::Thread { name: "service-signals", source })?;
        let now = Instant::now();
        Ok(Service {
            notifier,
            liveness: Arc::new(Liveness::new(opts.stuck_after)),
            opts,
            stop,
            reloads,
            current,
            stats,
            tick: Mutex::new(Tick {
                ready_sent: false,
                frames: 0,
                last_watchdog: None,
                window_start: now,
                window_frames: 0,
            }),
            signals: handle,
            thread: Some(thread),
            _alive: alive_tx,
        })
    }

    /// Set by SIGTERM/SIGINT (or [`Service::request_stop`]).
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stop without a signal (end of stream, max_frames): STOPPING=1, no drain timer.
    pub fn request_stop(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            self.notifier.send(&[NotifyState::Stopping]);
        }
    }

    /// The newest config accepted by a SIGHUP since the last call (older ones are skipped).
    pub fn poll_reload(&self) -> Option<Config> {
        self.reloads.try_iter().last()
    }

    /// The config in force: the initial one, or the last accepted reload.
    pub fn current_config(&self) -> Arc<Config> {
        lock(&self.current).clone()
    }

    pub fn reload_stats(&self) -> ReloadStats {
        lock(&self.stats).clone()
    }

    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Call once per processed frame from the inference loop, with the M it ran at. Sends
    /// READY=1 (and a first STATUS=) on the first frame, WATCHDOG=1 every half watchdog
    /// period, and STATUS="<fps> FPS, M=<m>, <n> frames" every `status_every`.
    pub fn frame_done(&self, m: usize) {
        self.liveness.frame_done();
        let now = Instant::now();
        let mut t = lock(&self.tick);
        t.frames += 1;
        t.window_frames += 1;
        if !t.ready_sent {
            t.ready_sent = true;
            t.last_watchdog = Some(now);
            t.window_start = now;
            t.window_frames = 0;
            let status = format!("first frame processed, M={m}");
            self.notifier.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            return;
        }
        self.watchdog_if_due(&mut t, now);
        let window = now - t.window_start;
        if window >= self.opts.status_every && t.window_frames > 0 {
            let fps = t.window_frames as f64 / window.as_secs_f64();
            let mut status = format!("{fps:.2} FPS, M={m}, {} frames", t.frames);
            if lock(&self.stats).rejected > 0 {
                status += ", last config reload rejected (see the journal)";
            }
            self.notifier.send(&[NotifyState::Status(&status)]);
            t.window_start = now;
            t.window_frames = 0;
        }
    }

    /// Call from the inference loop when it is alive but has no frame (camera retry, idle):
    /// WATCHDOG=1 when due, nothing else.
    pub fn heartbeat(&self) {
        let mut t = lock(&self.tick);
        self.watchdog_if_due(&mut t, Instant::now());
    }

    fn watchdog_if_due(&self, t: &mut Tick, now: Instant) {
        let Some(every) = self.notifier.watchdog_every() else {
            return;
        };
        if t.last_watchdog.is_none_or(|last| now - last >= every) {
            t.last_watchdog = Some(now);
            self.notifier.send(&[NotifyState::Watchdog]);
        }
    }
}

impl SignalCtx {
    fn on_signal(&self, sig: i32) {
        match sig {
            SIGHUP => self.reload(),
            _ => {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if self.stop.swap(true, Ordering::SeqCst) {
                    log::warn!("{name} again while draining: exiting now");
                    std::process::exit(1);
                }
                log::info!("{name}: draining, then exiting (at most {:.1}s)", self.drain_timeout.as_secs_f64());
                self.notifier.send(&[NotifyState::Stopping]);
                self.start_drain_timer();
            }
        }
    }

    fn start_drain_timer(&self) {
        let (alive, timeout) = (self.alive.clone(), self.drain_timeout);
        let spawned = std::thread::Builder::new().name("service-drain-timer".into()).spawn(move || {
            // Disconnected = the service handle was dropped: the pipeline returned in time.
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = alive.recv_timeout(timeout) {
                log::error!("the pipeline did not drain within {:.1}s: exiting", timeout.as_secs_f64());
                std::process::exit(1);
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the drain timer: {e}");
        }
    }

    fn reload(&self) {
        match (self.loader)() {
            Ok(cfg) => {
                let old = lock(&self.current).clone();
                let plan = reload_plan(&old, &cfg);
                log::info!("SIGHUP: reloaded {}: {plan:?}", cfg.origin);
                if !plan.restart_needed.is_empty() {
                    log::warn!("SIGHUP: {} changed; that takes effect after a restart", plan.restart_needed.join(", "));
                }
                *lock(&self.current) = Arc::new(cfg.clone());
                lock(&self.stats).accepted += 1;
                let _ = self.reload_tx.send(cfg);
                self.notifier.send(&[NotifyState::Status("config reloaded")]);
            }
            Err(e) => {
                log::error!("SIGHUP: {e}; keeping the current config");
                let mut st = lock(&self.stats);
                st.rejected += 1;
                st.last_rejection = Some(Arc::new(e));
                drop(st);
                self.notifier.send(&[NotifyState::Status("config reload rejected; keeping the current config")]);
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.signals.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_follows_libsystemd() {
        let me = 4242;
        assert_eq!(watchdog_from(Some("3000000"), Some("4242"), me), Some(Duration::from_secs(3)));
        assert_eq!(watchdog_from(Some("3000000"), None, me), Some(Duration::from_secs(3)));
        assert_eq!(watchdog_from(Some("3000000"), Some("1"), me), None);
        assert_eq!(watchdog_from(Some("3000000"), Some("x"), me), None);
        assert_eq!(watchdog_from(Some("0"), None, me), None);
        assert_eq!(watchdog_from(Some("soon"), None, me), None);
        assert_eq!(watchdog_from(None, Some("4242"), me), None);
    }

    #[test]
    fn reload_plan_separates_live_and_restart_changes() {
        let old = Config::embedded_default().unwrap();
        let mut new = old.clone();
        assert_eq!(reload_plan(&old, &new), ReloadPlan::default());
        new.reduce.m = 64;
        new.sink.http.enabled = true;
        let p = reload_plan(&old, &new);
        assert!(p.reduce && p.sinks && !p.budget && !p.pipeline && p.restart_needed.is_empty());
        new.reduce.cut += 1;
        new.model.input_size = 224;
        let p = reload_plan(&old, &new);
        assert_eq!(p.restart_needed, ["model", "reduce.cut"]);
    }
}
