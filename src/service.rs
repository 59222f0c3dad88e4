//! systemd integration: sd-notify READY/WATCHDOG/STATUS, SIGTERM drain, SIGHUP reload.
