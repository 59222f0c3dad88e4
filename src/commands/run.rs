//! `ailurus run`: stream frames from the source through the model to the sinks until the
//! source ends, `--frames` is reached, or SIGTERM/SIGINT. Runs under systemd as well:
//! READY=1 after the first frame, WATCHDOG=1 while frames flow, STATUS= with FPS and M, and
//! SIGHUP re-reads the config file (budget and reducer knobs apply at once; a bad file is
//! rejected with one log line and the old config stays). Remote `set` requests (the MQTT
//! sink's `<prefix>/set`) are applied on the same path, between SIGHUPs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::ConfigArg;
use ailurus::app::{self, StatusHub};
use ailurus::config::Config;
use ailurus::pipeline::Pipeline;
use ailurus::service::{loader_for, Notifier, Service, ServiceOptions};
use ailurus::sink::{ControlOutcome, ControlRequest, SinkContext};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// Stop after this many frames (overrides [pipeline] max_frames).
    #[arg(long)]
    frames: Option<u64>,
    /// Play a recorded stream at its recorded rate (sets [source] realtime).
    #[arg(long)]
    realtime: bool,
}

pub fn command(a: Args) -> Result<()> {
    let mut cfg = a.config.load()?;
    if let Some(n) = a.frames {
        cfg.pipeline.max_frames = n;
    }
    cfg.source.realtime |= a.realtime;
    let loader = loader_for(a.config.config.clone());
    let svc = Service::install(cfg.clone(), loader, ServiceOptions::default(), Notifier::from_env())?;
    let hub = Arc::new(StatusHub::new(svc.liveness()));
    let (control_tx, control_rx) = crossbeam_channel::bounded::<ControlRequest>(8);
    let ctx = SinkContext {
        status: Some(hub.clone()),
        board: Some(hub.board()),
        control: Some(control_tx),
        about: app::summary(&cfg),
        streams: cfg.streams.keys().cloned().collect(),
    };
    let (pipeline, running) = app::start(&cfg, svc.stop_flag(), Vec::new(), &ctx)?;
    hub.set_running(&running);
    let mut seen = 0u64;
    let mut current = cfg;
    while !pipeline.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        if svc.should_stop() {
            pipeline.stop();
        }
        let published = running.metrics.frames_published.load(Ordering::Relaxed);
        if published > seen {
            for _ in seen..published {
                svc.frame_done(running.metrics.current_m());
            }
            seen = published;
        } else if running.waiting_for_a_source() {
            // Waiting for the camera is not a hang: keep the watchdog fed.
            svc.heartbeat();
        }
        if let Some(new) = svc.poll_reload() {
            app::apply_reload(&pipeline, &current, &new);
            current = new;
        }
        for req in control_rx.try_iter() {
            apply_remote(&pipeline, &mut current, req);
        }
    }
    pipeline.wait()?;
    Ok(())
}

/// A remote `set`: validated onto the config in force, then applied as a reload would be.
fn apply_remote(pipeline: &Pipeline, current: &mut Config, req: ControlRequest) {
    let (new, outcome) = ailurus::control::handle(current, &req.body);
    match (&new, &outcome) {
        (Some(new), ControlOutcome::Applied { changed }) => {
            log::info!("remote set from {}: applying [{}]", req.origin, changed.join("], ["));
            app::apply_reload(pipeline, current, new);
        }
        (_, ControlOutcome::Rejected { problems }) => {
            let p: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.key, p.msg)).collect();
            log::warn!("remote set from {} rejected: {}", req.origin, p.join("; "));
        }
        _ => {}
    }
    if let Some(new) = new {
        *current = new;
    }
    req.respond(outcome);
}
