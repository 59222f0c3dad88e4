//! `[sink.mqtt]` against a real broker: each test starts its own mosquitto on 127.0.0.1 with a
//! free port and its own config in a temp dir, runs the built `ailurus` binary (224 px,
//! synthetic source) and watches the topics with a rumqttc subscriber.
//!
//! Needs Debian's `mosquitto` (tools/setup.sh installs it) and the real model (tools/
//! fetch_assets.sh). Without mosquitto a test prints SKIP, or fails when
//! `AILURUS_REQUIRE_BROKER=1` (CI sets it). `AILURUS_MOSQUITTO=/path/to/mosquitto` picks the
//! broker binary. The meta messages are validated against
//! docs/mqtt-meta.schema.json with Python's `jsonschema` from .cache/venv (tools/setup_python.sh).
//! Self-contained: no helpers from tests/common.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

#[path = "sink_mqtt/streams.rs"]
mod streams;

/// The tests each run the model: one at a time, on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// mosquitto's binaries (`AILURUS_MOSQUITTO` names the broker's, if set), or None after
/// printing SKIP (a failure when AILURUS_REQUIRE_BROKER=1).
fn broker_bins(test: &str) -> Option<(PathBuf, PathBuf)> {
    let broker = match std::env::var_os("AILURUS_MOSQUITTO") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => find_bin("mosquitto"),
    };
    match (broker, find_bin("mosquitto_passwd")) {
        (Some(m), Some(p)) => Some((m, p)),
        _ => {
            if std::env::var("AILURUS_REQUIRE_BROKER").as_deref() == Ok("1") {
                panic!("{test}: mosquitto not found and AILURUS_REQUIRE_BROKER=1 (tools/setup.sh installs it)");
            }
            eprintln!("SKIP {test}: mosquitto not found (apt-get install mosquitto, or tools/setup.sh)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A mosquitto on 127.0.0.1:`port`, configured in `dir`; killed on drop.
struct Broker {
    bin: PathBuf,
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start(bin: &Path, dir: &Path, port: u16, extra: &str) -> Broker {
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\npersistence false\nuser root\nlog_dest file {}\nlog_type all\n{extra}\n",
            dir.join("mosquitto.log").display()
        );
        std::fs::write(&conf, text).unwrap();
        let mut b = Broker { bin: bin.to_path_buf(), conf, port, child: None };
        b.restart();
        b
    }

    fn restart(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.conf).stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start mosquitto"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on 127.0.0.1:{}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One received message.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    at: Instant,
}

impl Msg {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{}: not JSON: {e}", self.topic))
    }
}

/// A subscriber that reconnects (and subscribes again) by itself; ends when dropped.
struct Sub {
    rx: Receiver<Msg>,
    _client: Client,
}

static SUB_ID: AtomicUsize = AtomicUsize::new(0);

fn subscribe(port: u16, filter: &str, login: Option<(&str, &str)>) -> Sub {
    let id = format!("test-sub-{}-{}", std::process::id(), SUB_ID.fetch_add(1, Ordering::Relaxed));
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5)).set_max_packet_size(64 << 20, 64 << 20);
    if let Some((u, p)) = login {
        opts.set_credentials(u, p);
    }
    let (client, mut conn) = Client::new(opts, 64);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let (c, filter) = (client.clone(), filter.to_string());
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.try_subscribe(&filter, QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let m = Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                    };
                    if tx.send(m).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscriber connected and subscribed");
    Sub { rx, _client: client }
}

impl Sub {
    /// The next message matching `pred` within `timeout` (others are skipped).
    fn wait(&self, timeout: Duration, mut pred: impl FnMut(&Msg) -> bool) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(m) if pred(&m) => return Some(m),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn drain(&self) -> Vec<Msg> {
        self.rx.try_iter().collect()
    }
}

/// A publishing client for `set` requests.
fn publisher(port: u16, login: Option<(&str, &str)>) -> Client {
    let id = format!("test-pub-{}-{}", std::process::id(), SUB_ID.fetch_add(1, Ordering::Relaxed));
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    if let Some((u, p)) = login {
        opts.set_credentials(u, p);
    }
    let (client, mut conn) = Client::new(opts, 16);
    std::thread::spawn(move || {
        for ev in conn.iter() {
            if ev.is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    client
}

/// `ailurus run` on a config written into `dir`; killed on drop.
struct Ailurus {
    child: Child,
    log: PathBuf,
}

fn write_config(dir: &Path, port: u16, mqtt_extra: &str, extra: &str) -> PathBuf {
    let cfg = format!(
        "[model]\ninput_size = 224\n[reduce]\nm = 128\n[source]\nkind = \"synthetic\"\n\
         [source.synthetic]\nwidth = 320\nheight = 240\n[sink.files]\nenabled = false\n\
         [budget]\nsizes = [224]\nm_min = 64\nm_max = 256\ncalibration = \"configs/calibration-default.csv\"\n\
         [sink.mqtt]\nenabled = true\nport = {port}\nclient_id = \"dev1\"\ntopic_prefix = \"ailurus/dev1\"\n{mqtt_extra}\n{extra}\n"
    );
    let path = dir.join("ailurus.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

impl Ailurus {
    fn start(config: &Path, frames: Option<u64>) -> Ailurus {
        let log = config.with_extension("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ailurus"));
        cmd.current_dir(root()).arg("run").arg("--config").arg(config).env("RUST_LOG", "info");
        if let Some(n) = frames {
            cmd.arg("--frames").arg(n.to_string());
        }
        let child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        Ailurus { child, log }
    }

    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "ailurus did not finish in {timeout:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ailurus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Validate every JSON document in `docs` against docs/mqtt-meta.schema.json (Python jsonschema).
fn validate_schema(dir: &Path, docs: &[serde_json::Value]) {
    let lines: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let file = dir.join("meta.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let python = root().join(".cache/venv/bin/python");
    assert!(python.exists(), "{} missing: run tools/setup_python.sh", python.display());
    let script = "import json, sys, jsonschema\n\
                  schema = json.load(open(sys.argv[1]))\n\
                  v = jsonschema.Draft202012Validator(schema)\n\
                  n = 0\n\
                  for line in open(sys.argv[2]):\n    v.validate(json.loads(line)); n += 1\n\
                  print(n)\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(root().join("docs/mqtt-meta.schema.json"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "schema validation failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), docs.len().to_string());
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the first `/metrics` line starting with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn twenty_frames_publish_meta_masks_and_status() {
    let _g = serial();
    let Some((mosq, _)) = broker_bins("twenty_frames_publish_meta_masks_and_status") else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(&mosq, dir.path(), port, "allow_anonymous true");
    let sub = subscribe(port, "ailurus/+/#", None);
    // The consumer example watches the fleet prefix alongside.
    let consumer = Command::new(root().join(".cache/venv/bin/python"))
        .arg(root().join("tools/mqtt_consumer.py"))
        .args(["--port", &port.to_string(), "--count", "20", "--timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tools/mqtt_consumer.py in .cache/venv (tools/setup_python.sh)");
    let cfg = write_config(dir.path(), port, "qos = 1\nevery_n = 5\nmasks = \"png\"", "");
    let started = Instant::now();
    let mut run = Ailurus::start(&cfg, Some(20));
    // While it runs, a late subscriber gets the retained `online` status.
    let first = sub.wait(Duration::from_secs(60), |m| m.topic.ends_with("/meta")).expect("a first meta message");
    let late = subscribe(port, "ailurus/dev1/status", None);
    let online = late.wait(Duration::from_secs(5), |_| true).expect("retained status");
    assert!(online.retain, "status is retained");
    let j = online.json();
    assert_eq!(j["state"], "online");
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(j["about"]["input_size"], 224);
    assert!(run.wait(Duration::from_secs(120)).success(), "{}", run.log_text());
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let mut msgs = vec![first];
    msgs.extend(sub.drain());
    let metas: Vec<_> = msgs.iter().filter(|m| m.topic == "ailurus/dev1/main/meta").map(|m| m.json()).collect();
    let masks: Vec<_> = msgs.iter().filter(|m| m.topic == "ailurus/dev1/main/mask").collect();
    assert_eq!(metas.len(), 20, "{}", run.log_text());
    validate_schema(dir.path(), &metas);
    let with_mask = metas.iter().filter(|m| m["mask"] == "png").count();
    assert_eq!((with_mask, masks.len()), (4, 4), "every 5th frame has its mask");
    for m in &masks {
        let img = image::load_from_memory(&m.payload).expect("a PNG mask");
        assert_eq!((img.width(), img.height()), (320, 240));
    }
    for m in &metas {
        let sum: f64 = m["classes"].as_array().unwrap().iter().map(|c| c["fraction"].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9, "fractions add up to 1: {m}");
    }
    let last_status = msgs.iter().rfind(|m| m.topic == "ailurus/dev1/status").expect("status");
    assert_eq!(last_status.json()["state"], "offline", "a clean exit publishes offline");
    let out = consumer.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "consumer: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("dev1/main seq=")).count(), 20, "{text}");
    let n = msgs.iter().filter(|m| m.topic.contains("/main/")).count();
    eprintln!("pipeline at 224 px: {n} messages for 20 frames in {:.1}s (start-up included)", elapsed.as_secs_f64());
}

#[test]
fn broker_restart_resumes_counts_drops_and_kill_9_leaves_the_last_will() {
    let _g = serial();
    let Some((mosq, _)) = broker_bins("broker_restart_resumes_counts_drops_and_kill_9_leaves_the_last_will") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    let mut broker = Broker::start(&mosq, dir.path(), port, "allow_anonymous true");
    let sub = subscribe(port, "ailurus/dev1/#", None);
    let http_cfg = format!("[sink.http]\nenabled = true\nport = {http}\n");
    let cfg = write_config(dir.path(), port, "qos = 1\nmax_queued = 2\nevery_n = 1\nmasks = \"rle\"", &http_cfg);
    let run = Ailurus::start(&cfg, None);
    let mut last_seq = 0;
    for _ in 0..3 {
        let m = sub.wait(Duration::from_secs(60), |m| m.topic.ends_with("/meta")).expect("meta before the outage");
        last_seq = m.json()["seq"].as_u64().unwrap();
    }
    broker.kill();
    std::thread::sleep(Duration::from_secs(5));
    broker.restart();
    let back = Instant::now();
    let m = sub
        .wait(Duration::from_secs(30), |m| m.topic.ends_with("/meta") && m.json()["seq"].as_u64() > Some(last_seq))
        .unwrap_or_else(|| panic!("no meta after the broker came back:\n{}", run.log_text()));
    let recovery = m.at.duration_since(back);
    eprintln!("recovery: first meta {:.0} ms after the broker was back", recovery.as_secs_f64() * 1e3);
    sub.wait(Duration::from_secs(10), |m| m.topic.ends_with("/meta")).expect("publishing goes on");
    let metrics = http_get(http, "/metrics");
    let connected: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ailurus_mqtt_connected{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert_eq!(connected, 1.0, "{metrics}");
    let full = metric(&metrics, "ailurus_mqtt_messages_dropped_total{reason=\"queue_full\"}").unwrap();
    assert!(full > 0.0, "QoS 1 beyond max_queued is dropped and counted:\n{metrics}");
    assert!(metric(&metrics, "ailurus_mqtt_connects_total").unwrap() >= 2.0);
    assert!(http_get(http, "/healthz").contains("200 OK"), "a broker outage is not unhealthy");
    let log = run.log_text();
    let outage_lines = log.lines().filter(|l| l.contains("[sink.mqtt] broker") && l.contains("retrying")).count();
    assert_eq!(outage_lines, 1, "one line per outage:\n{log}");
    assert!(log.contains("connected again after"), "{log}");
    // kill -9: the broker publishes the Last Will.
    let pid = run.child.id().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let will = sub
        .wait(Duration::from_secs(10), |m| m.topic == "ailurus/dev1/status" && m.json()["state"] == "offline")
        .expect("the Last Will after kill -9");
    assert_eq!(will.json()["reason"], "connection lost");
    drop(run);
}

#[test]
fn remote_set_applies_a_budget_and_rejects_bad_requests() {
    let _g = serial();
    let Some((mosq, _)) = broker_bins("remote_set_applies_a_budget_and_rejects_bad_requests") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    let _broker = Broker::start(&mosq, dir.path(), port, "allow_anonymous true");
    let sub = subscribe(port, "ailurus/dev1/#", None);
    let cfg =
        write_config(dir.path(), port, "masks = \"none\"", &format!("[sink.http]\nenabled = true\nport = {http}\n"));
    let run = Ailurus::start(&cfg, None);
    sub.wait(Duration::from_secs(60), |m| m.topic.ends_with("/meta")).expect("running");
    let op = publisher(port, None);
    let set = |body: &str| op.publish("ailurus/dev1/set", QoS::AtLeastOnce, false, body.as_bytes().to_vec()).unwrap();
    let result = |id: &str| {
        sub.wait(Duration::from_secs(10), |m| m.topic == "ailurus/dev1/set/result" && m.json()["id"] == id)
            .unwrap_or_else(|| panic!("no result for {id}:\n{}", run.log_text()))
            .json()
    };
    set(r#"{"id": "t1", "budget": {"target_ms": 1234}}"#);
    let r = result("t1");
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(r["changed"], serde_json::json!(["budget"]));
    let target = || metric(&http_get(http, "/metrics"), "ailurus_budget_target_seconds").unwrap();
    assert_eq!(target(), 1.234);
    set(r#"{"id": "t2", "budget": {"target_ms": -5, "m_min": 0}}"#);
    let r = result("t2");
    assert_eq!(r["applied"], false, "{r}");
    let keys: Vec<_> =
        r["problems"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap().to_string()).collect();
    assert!(keys.contains(&"[budget] target_ms".to_string()) && keys.contains(&"[budget] m_min".to_string()), "{r}");
    set(r#"{"id": "t3", "reduce": {"cut": 1}}"#);
    let r = result("t3");
    assert_eq!(r["applied"], false);
    assert!(r["problems"][0]["msg"].as_str().unwrap().contains("cut"), "{r}");
    set("not json");
    let r = sub.wait(Duration::from_secs(10), |m| m.topic.ends_with("/set/result")).expect("a result").json();
    assert_eq!(r["problems"][0]["key"], "[set]", "{r}");
    assert_eq!(target(), 1.234, "rejected requests change nothing");
    let metrics = http_get(http, "/metrics");
    assert_eq!(metric(&metrics, "ailurus_mqtt_set_requests_total{result=\"applied\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "ailurus_mqtt_set_requests_total{result=\"rejected\"}"), Some(3.0));
    let log = run.log_text();
    assert!(log.contains("budget now: on target 1234 ms"), "{log}");
}

#[test]
fn credentials_and_acl_are_enforced_by_the_broker() {
    let _g = serial();
    let Some((mosq, passwd)) = broker_bins("credentials_and_acl_are_enforced_by_the_broker") else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pw = dir.path().join("passwd");
    for (i, (u, p)) in [("dev1", "devpass"), ("op", "oppass"), ("viewer", "viewpass")].iter().enumerate() {
        let mut cmd = Command::new(&passwd);
        if i == 0 {
            cmd.arg("-c");
        }
        assert!(cmd.arg("-b").arg(&pw).arg(u).arg(p).status().unwrap().success());
    }
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user dev1\ntopic write ailurus/dev1/#\ntopic read ailurus/dev1/set\n\n\
         user op\ntopic readwrite ailurus/#\n\n\
         user viewer\ntopic read ailurus/#\n",
    )
    .unwrap();
    let extra = format!("allow_anonymous false\npassword_file {}\nacl_file {}", pw.display(), acl.display());
    let _broker = Broker::start(&mosq, dir.path(), port, &extra);
    let cred = dir.path().join("dev1.cred");
    // Wrong password: one line naming [sink.mqtt], and it keeps retrying.
    std::fs::write(&cred, "dev1\nwrong\n").unwrap();
    let cfg = write_config(dir.path(), port, &format!("credentials = \"{}\"", cred.display()), "");
    let mut run = Ailurus::start(&cfg, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.log_text().contains("[sink.mqtt] broker") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3)); // several retries
    assert!(run.child.try_wait().unwrap().is_none(), "a refused login is retried, not fatal");
    let log = run.log_text();
    let lines: Vec<_> = log.lines().filter(|l| l.contains("[sink.mqtt]") && l.contains("refused the login")).collect();
    assert_eq!(lines.len(), 1, "one line for the outage:\n{log}");
    assert!(lines[0].contains("retrying") && lines[0].contains("dev1.cred"), "{}", lines[0]);
    drop(run);
    // Right password: a viewer's set is dropped by the broker, an operator's is applied.
    std::fs::write(&cred, "dev1\ndevpass\n").unwrap();
    let run = Ailurus::start(&cfg, None);
    let sub = subscribe(port, "ailurus/dev1/#", Some(("op", "oppass")));
    sub.wait(Duration::from_secs(60), |m| m.topic.ends_with("/meta")).unwrap_or_else(|| panic!("{}", run.log_text()));
    let viewer = publisher(port, Some(("viewer", "viewpass")));
    viewer
        .publish("ailurus/dev1/set", QoS::AtLeastOnce, false, r#"{"id": "v", "budget": {"target_ms": 999}}"#)
        .unwrap();
    let denied = sub.wait(Duration::from_secs(3), |m| m.topic.ends_with("/set/result") || m.topic.ends_with("/set"));
    assert!(denied.is_none(), "a client without write rights reaches nothing: {denied:?}");
    let op = publisher(port, Some(("op", "oppass")));
    op.publish("ailurus/dev1/set", QoS::AtLeastOnce, false, r#"{"id": "o", "budget": {"target_ms": 999}}"#).unwrap();
    let r =
        sub.wait(Duration::from_secs(10), |m| m.topic.ends_with("/set/result")).expect("the operator's result").json();
    assert_eq!((r["id"].as_str(), r["applied"].as_bool()), (Some("o"), Some(true)), "{r}");
    assert_eq!(run.log_text().matches("budget now: on target 999 ms").count(), 1, "only the operator's set applied");
}

/// The sink alone, as fast as it is fed: 224x224 masks, meta every frame, PNG mask every
/// frame, QoS 0, to a local mosquitto. Printed, never asserted (timings).
#[test]
fn sink_throughput_at_224_is_printed() {
    use ailurus::frame::{Frame, Mask};
    use ailurus::sink::mqtt::{MqttConfig, MqttSink};
    use ailurus::sink::{Output, Sink, SinkContext};
    use std::sync::Arc;
    let _g = serial();
    let Some((mosq, _)) = broker_bins("sink_throughput_at_224_is_printed") else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(&mosq, dir.path(), port, "allow_anonymous true\nmax_queued_messages 100000");
    let sub = subscribe(port, "bench/#", None);
    for (masks, every_n) in [("png", 1), ("rle", 1), ("png", 10)] {
        let cfg = MqttConfig {
            enabled: true,
            port: port as u32,
            client_id: format!("bench-{masks}-{every_n}"),
            topic_prefix: "bench".into(),
            masks: masks.into(),
            every_n,
            max_queued: 256,
            ..Default::default()
        };
        let mut sink = MqttSink::build(&cfg, dir.path(), &SinkContext::default()).unwrap();
        let stats = sink.stats();
        let t = Instant::now();
        while !stats.connected() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut classes = vec![0u8; 224 * 224];
        for (i, c) in classes.iter_mut().enumerate() {
            let (x, y) = (i % 224, i / 224);
            *c = ((x - 112).pow(2) + (y - 112).pow(2) < 60 * 60 || (x / 20 + y / 30) % 7 == 0) as u8;
        }
        let mask = Arc::new(Mask { width: 224, height: 224, classes, scores: vec![], num_classes: 2 });
        let _ = sub.drain();
        let (t, run_for) = (Instant::now(), Duration::from_secs(3));
        let mut frames = 0u64;
        while t.elapsed() < run_for {
            let out = Output {
                frame: Arc::new(Frame::new(frames, 224, 224)),
                mask: mask.clone(),
                m: 128,
                input_size: 224,
                latency: Duration::from_millis(5),
                partition: None,
                target_ms: 0.0,
            };
            sink.publish(&out).unwrap();
            frames += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let got = sub.drain().len();
        let (away, full) = stats.dropped();
        eprintln!(
            "mqtt sink at 224 px, masks {masks} every {every_n}: {frames} frames offered in {secs:.1}s ({:.0}/s), \
             {got} messages received ({:.0} msg/s), dropped {away} away + {full} queue full",
            frames as f64 / secs,
            got as f64 / secs
        );
        drop(sink);
    }
}

/// `openssl` with `args` in `dir`; panics on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (Debian package openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a certificate it signs for `cn` (with `san`, e.g. "IP:127.0.0.1").
fn make_certs(dir: &Path, ca: &str, leaves: &[(&str, &str)]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
    for (name, san) in leaves {
        std::fs::write(dir.join(format!("{name}.ext")), format!("subjectAltName={san}\n")).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

#[test]
fn tls_with_a_client_certificate_publishes_and_a_wrong_ca_is_one_line() {
    let _g = serial();
    let Some((mosq, _)) = broker_bins("tls_with_a_client_certificate_publishes_and_a_wrong_ca_is_one_line") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d, "ca", &[("server", "IP:127.0.0.1"), ("dev1", "DNS:dev1")]);
    make_certs(d, "other-ca", &[]);
    let (plain, tls) = (free_port(), free_port());
    let extra = format!(
        "allow_anonymous true\nlistener {tls} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\n\
         keyfile {0}/server.key\nrequire_certificate true\n",
        d.display()
    );
    let _broker = Broker::start(&mosq, d, plain, &extra);
    let sub = subscribe(plain, "ailurus/dev1/#", None);
    let tls_cfg = |ca: &str| {
        format!(
            "masks = \"none\"\n[sink.mqtt.tls]\nenabled = true\nca_file = \"{0}/{ca}.pem\"\n\
             cert_file = \"{0}/dev1.pem\"\nkey_file = \"{0}/dev1.key\"\n",
            d.display()
        )
    };
    let cfg = write_config(d, tls, &tls_cfg("ca"), "");
    let mut run = Ailurus::start(&cfg, Some(3));
    assert!(run.wait(Duration::from_secs(120)).success(), "{}", run.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let metas = sub.drain().iter().filter(|m| m.topic.ends_with("/meta")).count();
    assert_eq!(metas, 3, "{}", run.log_text());
    assert!(run.log_text().contains("over TLS"), "{}", run.log_text());
    // A CA that did not sign the broker's certificate: one line naming [sink.mqtt], retried.
    let cfg = write_config(d, tls, &tls_cfg("other-ca"), "");
    let run = Ailurus::start(&cfg, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.log_text().contains("[sink.mqtt] broker") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = run.log_text();
    let lines: Vec<_> = log.lines().filter(|l| l.contains("[sink.mqtt] broker") && l.contains("retrying")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("TLS"), "{}", lines[0]);
    assert!(sub.drain().iter().all(|m| !m.topic.ends_with("/meta")), "nothing published without trust");
}

#[test]
fn the_fleet_example_config_is_valid() {
    let cfg = ailurus::config::Config::load(&root().join("configs/examples/mqtt-fleet.toml")).unwrap();
    assert!(cfg.sink.mqtt.enabled && cfg.sink.mqtt.tls.enabled);
    assert_eq!(cfg.sink.mqtt.topic_prefix, "", "the prefix defaults to the hostname");
}
