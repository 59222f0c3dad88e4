//! sd-notify: READY, WATCHDOG and STATUS arrive on a notify socket the test creates itself;
//! SIGTERM makes a running service drain and exit 0, or exit 1 when it does not drain in time.
//!
//! The SIGTERM tests run this test binary again as a child process (selected with `--exact`,
//! marked by AILURUS_SERVICE_CHILD), with NOTIFY_SOCKET and WATCHDOG_USEC in its environment,
//! as systemd would start it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ailurus::config::Config;
use ailurus::service::{loader_for, Notifier, Service, ServiceOptions};

const CHILD: &str = "AILURUS_SERVICE_CHILD";

/// Bind the notify socket in `dir` and read it on a thread (so the sender's queue never
/// fills): each datagram arrives on the returned channel.
fn notify_socket(dir: &Path, name: &str) -> Receiver<String> {
    let sock = UnixDatagram::bind(dir.join(name)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

fn recv(rx: &Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(20)).expect("a notify message within the timeout")
}

/// Receive messages until one satisfies `want` (bounded); returns it and those before it.
fn recv_until(rx: &Receiver<String>, want: impl Fn(&str) -> bool) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no matching notify message; got {before:?}");
        let m = recv(rx);
        if want(&m) {
            return (m, before);
        }
        before.push(m);
    }
}

/// "STATUS=12.34 FPS, M=256, 17 frames\n"
fn is_fps_status(m: &str, want_m: usize) -> bool {
    let Some(rest) = m.strip_prefix("STATUS=").and_then(|r| r.strip_suffix('\n')) else {
        return false;
    };
    let Some((fps, rest)) = rest.split_once(" FPS, M=") else {
        return false;
    };
    let Some((mm, frames)) = rest.split_once(", ") else {
        return false;
    };
    fps.parse::<f64>().is_ok_and(|f| f > 0.0)
        && mm == want_m.to_string()
        && frames.strip_suffix(" frames").is_some_and(|n| n.parse::<u64>().is_ok())
}

fn service(notifier: Notifier, opts: ServiceOptions) -> Service {
    Service::install(Config::embedded_default().unwrap(), loader_for(None), opts, notifier).unwrap()
}

#[test]
fn ready_watchdog_and_status_reach_the_notify_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = notify_socket(tmp.path(), "notify.sock");
    let path = tmp.path().join("notify.sock");

    // A watchdog of 2 us: every frame (1 ms apart) is due a ping.
    let opts = ServiceOptions { status_every: Duration::from_millis(20), ..Default::default() };
    let svc = service(Notifier::to_socket(path.as_os_str(), Some(Duration::from_micros(2))).unwrap(), opts.clone());
    assert_eq!(svc.notifier().watchdog_every(), Some(Duration::from_micros(1)));
    svc.frame_done(512);
    assert_eq!(recv(&rx), "READY=1\nSTATUS=first frame processed, M=512\n");
    std::thread::sleep(Duration::from_millis(1));
    svc.frame_done(256);
    assert_eq!(recv(&rx), "WATCHDOG=1\n");
    // Keep processing frames until a STATUS with the FPS comes (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| is_fps_status(m, 256)) {
        assert!(Instant::now() < deadline, "no STATUS with FPS: {got:?}");
        std::thread::sleep(Duration::from_millis(1));
        svc.frame_done(256);
        got.push(recv(&rx));
        if got.last().unwrap().starts_with("STATUS=") {
            continue;
        }
        assert_eq!(got.last().unwrap(), "WATCHDOG=1\n");
    }
    assert!(!got.iter().any(|m| m.contains("READY")), "READY only once: {got:?}");
    drop(svc);

    // A long watchdog: no ping is due within the test, so none is sent; heartbeat() alone
    // sends a first ping (nothing before it) and never READY.
    // A fresh socket: messages of the first service may still be queued on the old one.
    let rx = notify_socket(tmp.path(), "notify2.sock");
    let path = tmp.path().join("notify2.sock");
    let opts = ServiceOptions { status_every: Duration::from_secs(3600), ..opts };
    let svc = service(Notifier::to_socket(path.as_os_str(), Some(Duration::from_secs(3600))).unwrap(), opts);
    svc.heartbeat();
    assert_eq!(recv(&rx), "WATCHDOG=1\n");
    svc.heartbeat();
    svc.frame_done(64);
    assert_eq!(recv(&rx), "READY=1\nSTATUS=first frame processed, M=64\n");
    for _ in 0..50 {
        svc.frame_done(64);
        svc.heartbeat();
    }
    svc.request_stop();
    assert!(svc.should_stop());
    assert_eq!(recv(&rx), "STOPPING=1\n", "no WATCHDOG before its time");
}

#[test]
fn without_notify_socket_everything_is_a_no_op() {
    let n = Notifier::disabled();
    assert!(!n.is_enabled());
    let svc = service(n, ServiceOptions::default());
    svc.frame_done(1);
    svc.heartbeat();
    assert!(!svc.should_stop());
}

/// The child side of the SIGTERM tests: a fake pipeline loop driven by the service handle.
fn child_main(mode: &str) {
    let _ = env_logger::builder().filter_level(log::LevelFilter::Info).try_init();
    let opts = ServiceOptions {
        drain_timeout: Duration::from_millis(if mode == "stuck" { 300 } else { 3000 }),
        status_every: Duration::from_millis(30),
        ..Default::default()
    };
    let svc = service(Notifier::from_env(), opts);
    let start = Instant::now();
    let mut frames = 0u64;
    // Bounded, so a lost signal cannot leave the child running.
    while start.elapsed() < Duration::from_secs(30) {
        if mode != "stuck" && svc.should_stop() {
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
        svc.frame_done(128);
        frames += 1;
    }
    println!("CHILD drained after {frames} frames, stop={}", svc.should_stop());
}

/// `test`'s full name in this binary (`notify::test` when this file is a module of tests/service).
fn test_name(test: &str) -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    }
}

fn run_child(test: &str, mode: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name(test), "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env("WATCHDOG_USEC", "60000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigterm(pid: u32) {
    let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(st.success());
}

fn wait_exit(child: std::process::Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = child;
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn sigterm_drains_and_exits_zero() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child_main(&mode);
    }
    let tmp = tempfile::tempdir().unwrap();
    let rx = notify_socket(tmp.path(), "notify.sock");
    let child = run_child("sigterm_drains_and_exits_zero", "drain", tmp.path());
    let (ready, _) = recv_until(&rx, |m| m.starts_with("READY=1\n"));
    assert_eq!(ready, "READY=1\nSTATUS=first frame processed, M=128\n");
    // WATCHDOG_USEC from the environment (60 ms, no WATCHDOG_PID): pings every 30 ms.
    recv_until(&rx, |m| m == "WATCHDOG=1\n");
    recv_until(&rx, |m| is_fps_status(m, 128));
    let t = Instant::now();
    sigterm(child.id());
    let (status, stdout, stderr) = wait_exit(child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}; stderr: {stderr}");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?} to exit", t.elapsed());
    assert!(stdout.contains("CHILD drained after") && stdout.contains("stop=true"), "{stdout}");
    assert!(stderr.contains("SIGTERM: draining"), "{stderr}");
    recv_until(&rx, |m| m == "STOPPING=1\n");
}

#[test]
fn sigterm_without_drain_exits_one_after_the_drain_timeout() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child_main(&mode);
    }
    let tmp = tempfile::tempdir().unwrap();
    let rx = notify_socket(tmp.path(), "notify.sock");
    let child = run_child("sigterm_without_drain_exits_one_after_the_drain_timeout", "stuck", tmp.path());
    recv_until(&rx, |m| m.starts_with("READY=1\n"));
    sigterm(child.id());
    let (status, stdout, stderr) = wait_exit(child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "stdout: {stdout}; stderr: {stderr}");
    assert!(stderr.contains("did not drain within 0.3s"), "{stderr}");
    assert!(!stdout.contains("CHILD drained"), "{stdout}");
}
