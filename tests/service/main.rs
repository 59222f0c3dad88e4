//! The service around the pipeline: start-up errors of the CLI, sd-notify and SIGTERM (in child
//! processes), and the systemd unit.
//!
//! SIGHUP reload raises a signal that reaches every service in the process, so it runs in its
//! own binary (tests/service_reload.rs).

#[path = "../common/mod.rs"]
mod common;

mod cli_errors;
mod notify;
mod unit;
