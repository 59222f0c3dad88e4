//! The sd_notify protocol: datagrams to `$NOTIFY_SOCKET` (READY, WATCHDOG, STATUS, STOPPING)
//! and the watchdog period from `$WATCHDOG_USEC`.
//!
//! Owns the notify socket only. Never blocks: the socket is non-blocking, and a message the
//! service manager cannot take is dropped (the first failure is logged).

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

use super::ServiceError;

/// Sends sd_notify datagrams to the service manager (a no-op outside systemd).
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr, String)>,
    watchdog: Option<Duration>,
    send_failed: AtomicBool,
}

/// The watchdog timeout from `WATCHDOG_USEC` / `WATCHDOG_PID`, as libsystemd's
/// `sd_watchdog_enabled` reads them: a PID other than ours disables it, no PID is ours.
pub fn watchdog_from(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        Some(Ok(p)) if p != my_pid => None,
        Some(Err(_)) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (set by systemd for
    /// `Type=notify` and `WatchdogSec=`). The environment is read once, here.
    pub fn from_env() -> Notifier {
        let var = |k| std::env::var(k).ok();
        let watchdog =
            watchdog_from(var("WATCHDOG_USEC").as_deref(), var("WATCHDOG_PID").as_deref(), std::process::id());
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notifier { watchdog, ..Notifier::disabled() },
            Some(path) => Notifier::to_socket(&path, watchdog).unwrap_or_else(|e| {
                log::warn!("{e}; not notifying systemd");
                Notifier::disabled()
            }),
        }
    }

    /// Notify the datagram socket at `path` (`@name` is an abstract socket). `watchdog` is the
    /// service manager's timeout; pings are sent every half of it.
    pub fn to_socket(path: &OsStr, watchdog: Option<Duration>) -> Result<Notifier, ServiceError> {
        let shown = path.to_string_lossy().into_owned();
        let err = |source| ServiceError::NotifySocket { path: shown.clone(), source };
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name).map_err(err)?
            }
            None => SocketAddr::from_pathname(path).map_err(err)?,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        // Never block the inference loop on a busy service manager: a full queue drops the
        // message (logged once) instead.
        sock.set_nonblocking(true).map_err(err)?;
        Ok(Notifier { target: Some((sock, addr, shown.clone())), watchdog, send_failed: AtomicBool::new(false) })
    }

    pub fn disabled() -> Notifier {
        Notifier { target: None, watchdog: None, send_failed: AtomicBool::new(false) }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send WATCHDOG=1 (half the manager's timeout), if a watchdog is set.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Send one datagram with these states (one per line). Failures are logged once.
    pub fn send(&self, states: &[NotifyState]) {
        let Some((sock, addr, shown)) = &self.target else {
            return;
        };
        let mut msg = String::new();
        for s in states {
            msg.push_str(&s.to_string());
            msg.push('\n');
        }
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            if !self.send_failed.swap(true, Ordering::Relaxed) {
                log::warn!("notify socket {shown}: {e} (further failures not logged)");
            }
        }
    }
}
