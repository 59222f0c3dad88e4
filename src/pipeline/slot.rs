//! The queue between two stages: depth 1, latest value wins.
//!
//! A `put` into a full slot evicts the waiting value (handed back to the putter, so its buffers
//! can be reused) and counts one drop. Built on a crossbeam `bounded(1)` channel whose sender
//! also holds a receiver, so it can take the stale value out. Must not block the putter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

/// The receiving side was dropped: nobody will take values any more.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed<T>(pub T);

pub struct SlotSender<T> {
    tx: Sender<T>,
    evict: Receiver<T>,
    drops: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

pub struct SlotReceiver<T> {
    rx: Receiver<T>,
    closed: Arc<AtomicBool>,
}

/// A latest-value-wins slot; each eviction adds one to `drops`.
pub fn slot<T>(drops: Arc<AtomicU64>) -> (SlotSender<T>, SlotReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let closed = Arc::new(AtomicBool::new(false));
    (SlotSender { tx, evict: rx.clone(), drops, closed: closed.clone() }, SlotReceiver { rx, closed })
}

impl<T> SlotSender<T> {
    /// Store `v`, replacing (and returning) a value that was still waiting.
    pub fn put(&self, mut v: T) -> Result<Option<T>, Closed<T>> {
        let mut evicted = None;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Closed(v));
            }
            match self.tx.try_send(v) {
                Ok(()) => return Ok(evicted),
                Err(TrySendError::Full(back)) => {
                    v = back;
                    // The receiver may take it first; then the next try_send succeeds.
                    if let Ok(old) = self.evict.try_recv() {
                        self.drops.fetch_add(1, Ordering::Relaxed);
                        evicted = Some(old);
                    }
                }
                Err(TrySendError::Disconnected(back)) => return Err(Closed(back)),
            }
        }
    }

    /// Like `put`, but first waits up to `patience` for the waiting value to be taken, so a
    /// receiver that is merely a moment late loses nothing.
    pub fn put_within(&self, v: T, patience: Duration) -> Result<Option<T>, Closed<T>> {
        match self.tx.send_timeout(v, patience) {
            Ok(()) => Ok(None),
            Err(crossbeam_channel::SendTimeoutError::Timeout(v)) => self.put(v),
            Err(crossbeam_channel::SendTimeoutError::Disconnected(v)) => Err(Closed(v)),
        }
    }

    /// True while a value waits to be taken.
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }
}

impl<T> SlotReceiver<T> {
    /// Wait for a value; `None` once the sender is gone and the slot is empty.
    pub fn recv(&self) -> Option<T> {
        self.rx.recv().ok()
    }

    /// Wait up to `d`. `Err(true)` = the sender is gone, `Err(false)` = timed out.
    pub fn recv_timeout(&self, d: Duration) -> Result<T, bool> {
        self.rx.recv_timeout(d).map_err(|e| e == RecvTimeoutError::Disconnected)
    }

    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// A value if one waits; `Err(true)` = empty and the sender is gone, `Err(false)` = empty.
    pub fn try_take(&self) -> Result<T, bool> {
        self.rx.try_recv().map_err(|e| e == crossbeam_channel::TryRecvError::Disconnected)
    }

    /// Add this slot to a `Select`, to wait on several slots at once.
    pub fn register<'a>(&'a self, sel: &mut crossbeam_channel::Select<'a>) -> usize {
        sel.recv(&self.rx)
    }
}

impl<T> Drop for SlotReceiver<T> {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_wins_and_every_eviction_is_counted() {
        let drops = Arc::new(AtomicU64::new(0));
        let (tx, rx) = slot(drops.clone());
        assert_eq!(tx.put(1), Ok(None));
        assert_eq!(tx.put(2), Ok(Some(1)));
        assert_eq!(tx.put(3), Ok(Some(2)));
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(tx.put(4), Ok(None));
        drop(tx);
        assert_eq!(rx.recv(), Some(4));
        assert_eq!(rx.recv(), None);
    }

    #[test]
    fn put_within_waits_for_a_late_receiver_then_replaces() {
        let drops = Arc::new(AtomicU64::new(0));
        let (tx, rx) = slot(drops.clone());
        tx.put(1).unwrap();
        assert_eq!(tx.put_within(2, Duration::from_millis(1)), Ok(Some(1)), "nobody took it: replaced");
        let taker = std::thread::spawn(move || {
            let first = rx.recv();
            (first, rx.recv())
        });
        assert_eq!(tx.put_within(3, Duration::from_secs(30)), Ok(None), "waited for the taker");
        drop(tx);
        assert_eq!(taker.join().unwrap(), (Some(2), Some(3)));
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn put_after_receiver_dropped_is_closed() {
        let (tx, rx) = slot(Arc::new(AtomicU64::new(0)));
        drop(rx);
        assert_eq!(tx.put(7), Err(Closed(7)));
    }

    #[test]
    fn concurrent_puts_and_takes_lose_nothing_uncounted() {
        let drops = Arc::new(AtomicU64::new(0));
        let (tx, rx) = slot::<u64>(drops.clone());
        let n = 20_000u64;
        let producer = std::thread::spawn(move || {
            let mut evicted = 0u64;
            for i in 0..n {
                if tx.put(i).unwrap().is_some() {
                    evicted += 1;
                }
            }
            evicted
        });
        let mut got = Vec::new();
        while let Some(v) = rx.recv() {
            got.push(v);
        }
        let evicted = producer.join().unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "values arrive in order");
        assert_eq!(got.last(), Some(&(n - 1)), "the last value is never lost");
        assert_eq!(got.len() as u64 + evicted, n);
        assert_eq!(drops.load(Ordering::Relaxed), evicted);
    }
}
