//! `SinkRunner`: one sink on its own thread behind a bounded queue.
//!
//! `offer` never blocks: when the queue is full the output is dropped and counted, so a slow
//! or hung sink cannot stall inference. Publish errors are counted and logged (rate-limited).
//! Must not know about the other stages.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::RateLimited;
use crate::metrics::Metrics;
use crate::sink::{Output, Sink};

pub struct SinkRunner {
    name: &'static str,
    tx: Option<Sender<Output>>,
    done: Receiver<()>,
    handle: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    /// The queue's receiving end, to take back what a sink left behind at shutdown.
    queue: Receiver<Output>,
}

impl SinkRunner {
    /// Start `sink` on its own thread with a queue of `capacity` outputs. `index` is the sink's
    /// position in `Metrics::sinks` (its counters).
    pub fn spawn(
        mut sink: Box<dyn Sink>,
        capacity: usize,
        metrics: Arc<Metrics>,
        index: usize,
    ) -> std::io::Result<SinkRunner> {
        let name = sink.name();
        let (tx, rx) = crossbeam_channel::bounded::<Output>(capacity.max(1));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let dropped = metrics.sinks[index].dropped.clone();
        let queue = rx.clone();
        let handle = std::thread::Builder::new().name(format!("sink-{name}")).spawn(move || {
            let sm = &metrics.sinks[index];
            let mut errs = RateLimited::new(Duration::from_secs(10));
            for out in rx {
                let t = Instant::now();
                match sink.publish(&out) {
                    Ok(()) => {
                        sm.published.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        sm.errors.fetch_add(1, Relaxed);
                        errs.warn(|| e.to_string());
                    }
                }
                sm.latency.record(t.elapsed());
            }
            let _ = done_tx.send(());
        })?;
        Ok(SinkRunner { name, tx: Some(tx), done, handle: Some(handle), dropped, queue })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Queue `out` for the sink; false (and one drop counted) when its queue is full.
    pub fn offer(&self, out: &Output) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(out.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Close the queue and wait up to `timeout` for the sink to publish what is queued. A sink
    /// still busy after that is left running (detached), the outputs still queued for it are
    /// taken back and counted as dropped, and false is returned.
    pub fn shutdown(mut self, timeout: Duration) -> bool {
        self.tx = None;
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                if let Some(h) = self.handle.take() {
                    let _ = h.join();
                }
                true
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let left = self.queue.try_iter().count() as u64;
                self.dropped.fetch_add(left, Relaxed);
                log::warn!(
                    "sink {}: still busy {:.1}s after shutdown; left behind, {left} queued output(s) dropped",
                    self.name,
                    timeout.as_secs_f64()
                );
                false
            }
        }
    }
}
