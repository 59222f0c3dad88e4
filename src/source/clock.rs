//! Time for the sources, injectable: the real clock sleeps, a test clock only advances. Also the
//! `Pacer` that plays streams at a fixed rate.
//!
//! Owns nothing but time. Must not know about frames or devices.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time, injectable: the real clock sleeps, a test clock only advances.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The process's monotonic clock and `std::thread::sleep`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// Paces frames at a fixed period on an injectable clock; never bursts to catch up.
pub struct Pacer {
    clock: Arc<dyn Clock>,
    period: Duration,
    due: Option<Instant>,
}

impl Pacer {
    pub fn new(clock: Arc<dyn Clock>, fps: f64) -> Pacer {
        Pacer { clock, period: Duration::from_nanos((1e9 / fps).round() as u64), due: None }
    }

    /// Wait until the next frame is due (the first one is due at once).
    pub fn pace(&mut self) {
        let now = self.clock.now();
        let next = match self.due {
            Some(due) if due > now => {
                self.clock.sleep(due - now);
                due + self.period
            }
            Some(due) if now - due <= self.period => due + self.period,
            _ => now + self.period,
        };
        self.due = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct StepClock {
        now: std::sync::Mutex<Instant>,
        slept: std::sync::Mutex<Vec<Duration>>,
    }
    impl Clock for StepClock {
        fn now(&self) -> Instant {
            *self.now.lock().unwrap()
        }
        fn sleep(&self, d: Duration) {
            self.slept.lock().unwrap().push(d);
            *self.now.lock().unwrap() += d;
        }
    }

    #[test]
    fn pacer_sleeps_to_the_schedule_without_bursting() {
        let clock = Arc::new(StepClock { now: std::sync::Mutex::new(Instant::now()), slept: Default::default() });
        let mut p = Pacer::new(clock.clone(), 10.0);
        p.pace(); // first frame at once
        *clock.now.lock().unwrap() += Duration::from_millis(30); // work took 30 ms
        p.pace(); // sleeps 70 ms
        *clock.now.lock().unwrap() += Duration::from_millis(500); // stalled: late by 400 ms
        p.pace(); // no sleep, schedule re-anchored
        p.pace(); // a full period later, not a burst
        let slept: Vec<u128> = clock.slept.lock().unwrap().iter().map(|d| d.as_millis()).collect();
        assert_eq!(slept, [70, 100]);
    }
}
