//! The health of one frame source, shared (`Arc<SourceHealth>`) between the source, which
//! writes it, and the pipeline, metrics and `/healthz`, which read it: up or down, since when,
//! the last error, and counters (frames, bad frames, reconnects, failed opens).
//!
//! Owns only the shared state and its one-line rendering. Must not log, retry or block: the
//! source decides what happened, this records it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shared, lock-light health record of a source.
#[derive(Debug)]
pub struct SourceHealth {
    name: String,
    /// What to call the source when it is down ("camera", "stream", ...).
    what: &'static str,
    up: AtomicBool,
    frames: AtomicU64,
    bad_frames: AtomicU64,
    reconnects: AtomicU64,
    open_failures: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    since: Instant,
    last_error: Option<String>,
}

/// A consistent copy of the health, for printing or serialising.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSnapshot {
    /// Device path, folder or file.
    pub name: String,
    pub up: bool,
    /// `"up"`, or `"camera down"` (`"<what> down"`).
    pub status: String,
    /// Frames delivered.
    pub frames: u64,
    /// Frames skipped as corrupt or truncated.
    pub bad_frames: u64,
    /// Times the source came back after being lost.
    pub reconnects: u64,
    /// Failed attempts to open the device.
    pub open_failures: u64,
    /// The most recent error, with its causes (kept after recovery, for diagnosis).
    pub last_error: Option<String>,
    /// Time spent in the current state (up or down).
    pub for_how_long: Duration,
}

impl SourceHealth {
    /// A new record; `what` names the source kind in the status ("camera" gives "camera down").
    pub fn new(name: impl Into<String>, what: &'static str, up: bool) -> SourceHealth {
        SourceHealth {
            name: name.into(),
            what,
            up: AtomicBool::new(up),
            frames: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            open_failures: AtomicU64::new(0),
            state: Mutex::new(State { since: Instant::now(), last_error: None }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The source delivers again (or for the first time).
    pub fn set_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.lock().since = Instant::now();
        }
    }

    /// The source is lost or cannot be opened; `err` is kept as the last error.
    pub fn set_down(&self, err: &(dyn std::error::Error + 'static)) {
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let mut st = self.lock();
        if was_up {
            st.since = Instant::now();
        }
        st.last_error = Some(error_chain(err));
    }

    /// Record an error that did not take the source down (a bad frame).
    pub fn note_error(&self, err: &(dyn std::error::Error + 'static)) {
        self.lock().last_error = Some(error_chain(err));
    }

    pub fn frame(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
    pub fn bad_frame(&self) {
        self.bad_frames.fetch_add(1, Ordering::Relaxed);
    }
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    pub fn open_failed(&self) {
        self.open_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
    pub fn bad_frames(&self) -> u64 {
        self.bad_frames.load(Ordering::Relaxed)
    }
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    pub fn open_failures(&self) -> u64 {
        self.open_failures.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let st = self.lock();
        let up = self.is_up();
        HealthSnapshot {
            name: self.name.clone(),
            up,
            status: if up { "up".to_string() } else { format!("{} down", self.what) },
            frames: self.frames(),
            bad_frames: self.bad_frames(),
            reconnects: self.reconnects(),
            open_failures: self.open_failures(),
            last_error: st.last_error.clone(),
            for_how_long: st.since.elapsed(),
        }
    }
}

impl std::fmt::Display for HealthSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} for {:.0} s", self.name, self.status, self.for_how_long.as_secs_f64())?;
        if let (false, Some(e)) = (self.up, &self.last_error) {
            write!(f, " ({e})")?;
        }
        write!(
            f,
            "; {} frames, {} bad, {} reconnects, {} failed opens",
            self.frames, self.bad_frames, self.reconnects, self.open_failures
        )
    }
}

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_up_transitions_keep_counters_and_last_error() {
        let h = SourceHealth::new("/dev/video9", "camera", false);
        assert_eq!(h.snapshot().status, "camera down");
        let err = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        h.set_down(&err);
        h.open_failed();
        let s = h.snapshot();
        assert!(!s.up);
        assert_eq!(s.last_error.as_deref(), Some("gone"));
        assert!(s.to_string().contains("camera down"), "{s}");
        assert!(s.to_string().contains("(gone)"), "{s}");
        h.set_up();
        h.frame();
        h.bad_frame();
        h.reconnected();
        let s = h.snapshot();
        assert!(s.up);
        assert_eq!(s.status, "up");
        assert_eq!((s.frames, s.bad_frames, s.reconnects, s.open_failures), (1, 1, 1, 1));
        assert!(!s.to_string().contains("gone"), "an old error is not shown while up: {s}");
    }

    #[test]
    fn error_chain_joins_causes_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
