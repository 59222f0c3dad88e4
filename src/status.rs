//! Health: whether frames flow and the camera is up, as `/healthz` reports it, and the
//! `StatusProvider` trait the http sink reads metrics and health from.
//!
//! Owns no threads; everything is updated by the pipeline and read by the http sink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the runtime is serving: `/healthz` answers 200 for `Ok`, else 503 with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// E.g. "camera down: /dev/video0: no such device", "inference stuck: no frame for 12s".
    Unavailable(String),
}

/// Metrics and health of the running pipeline, for the http sink.
pub trait StatusProvider: Send + Sync {
    /// The Prometheus text exposition (one or more complete metric families).
    fn prometheus(&self) -> String;
    fn health(&self) -> Health;
}

/// Parts beside the pipeline that report their own metrics (a sink's broker connection):
/// listed in `/metrics`, never consulted for `/healthz` (a broker that is down must not mark
/// the whole service unhealthy). One entry per name; registering a name again replaces it.
#[derive(Default)]
pub struct Board {
    parts: Mutex<Vec<(String, Arc<dyn StatusProvider>)>>,
}

impl Board {
    pub fn register(&self, name: &str, part: Arc<dyn StatusProvider>) {
        let mut parts = lock(&self.parts);
        parts.retain(|(n, _)| n != name);
        parts.push((name.to_string(), part));
    }

    /// Every part's exposition, concatenated.
    pub fn prometheus(&self) -> String {
        let parts: Vec<_> = lock(&self.parts).iter().map(|(_, p)| p.clone()).collect();
        parts.iter().map(|p| p.prometheus()).collect()
    }
}

/// When frames last flowed and whether the camera is up: the health behind `/healthz`.
pub struct Liveness {
    started: Instant,
    /// Microseconds after `started` of the last frame, plus one; 0 = none yet.
    last_frame: AtomicU64,
    camera_down: Mutex<Option<String>>,
    stuck_after: Duration,
}

impl Liveness {
    pub fn new(stuck_after: Duration) -> Liveness {
        Liveness { started: Instant::now(), last_frame: AtomicU64::new(0), camera_down: Mutex::new(None), stuck_after }
    }

    pub fn frame_done(&self) {
        self.last_frame.store(self.started.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
    }

    /// The source cannot deliver frames (it keeps retrying); `reason` names the device.
    pub fn camera_down(&self, reason: impl Into<String>) {
        *lock(&self.camera_down) = Some(reason.into());
    }

    pub fn camera_up(&self) {
        *lock(&self.camera_down) = None;
    }

    /// Time since the last frame, or None before the first.
    pub fn last_frame_age(&self) -> Option<Duration> {
        match self.last_frame.load(Ordering::Relaxed) {
            0 => None,
            t => Some(self.started.elapsed().saturating_sub(Duration::from_micros(t - 1))),
        }
    }

    pub fn health(&self) -> Health {
        if let Some(reason) = &*lock(&self.camera_down) {
            return Health::Unavailable(format!("camera down: {reason}"));
        }
        let age = match self.last_frame_age() {
            Some(age) => age,
            None if self.started.elapsed() <= self.stuck_after => {
                return Health::Unavailable("starting: no frame yet".into())
            }
            None => self.started.elapsed(),
        };
        if age > self.stuck_after {
            Health::Unavailable(format!("inference stuck: no frame for {}s", age.as_secs()))
        } else {
            Health::Ok
        }
    }
}

impl StatusProvider for Liveness {
    fn prometheus(&self) -> String {
        let up = lock(&self.camera_down).is_none() as u8;
        let mut s = format!(
            "# HELP ailurus_camera_up Whether the source is delivering frames (1) or retrying (0).\n\
             # TYPE ailurus_camera_up gauge\nailurus_camera_up {up}\n"
        );
        if let Some(age) = self.last_frame_age() {
            s += &format!(
                "# HELP ailurus_last_frame_age_seconds Seconds since the last processed frame.\n\
                 # TYPE ailurus_last_frame_age_seconds gauge\nailurus_last_frame_age_seconds {:.3}\n",
                age.as_secs_f64()
            );
        }
        s
    }

    fn health(&self) -> Health {
        Liveness::health(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_reports_camera_then_stuck() {
        let l = Liveness::new(Duration::ZERO);
        assert!(matches!(l.health(), Health::Unavailable(r) if r.starts_with("inference stuck")));
        l.frame_done();
        l.camera_down("/dev/video0: no such device");
        assert_eq!(l.health(), Health::Unavailable("camera down: /dev/video0: no such device".into()));
        l.camera_up();
        let l = Liveness::new(Duration::from_secs(3600));
        assert_eq!(l.health(), Health::Unavailable("starting: no frame yet".into()));
        l.frame_done();
        assert_eq!(l.health(), Health::Ok);
        assert!(l.prometheus().contains("ailurus_camera_up 1\n"));
    }
}
