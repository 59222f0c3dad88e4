//! SIGHUP reloads the config file: a valid one is delivered to the pipeline, a broken one is
//! rejected (one log line) and the old one stays in force.
//!
//! One test in this binary: the SIGHUPs raised here reach every service in the process.

use std::path::Path;
use std::time::{Duration, Instant};

use ailurus::config::Config;
use ailurus::service::{loader_for, reload_plan, Notifier, Service, ServiceOptions};

fn write_config(path: &Path, text: &str) {
    // Atomic, like an editor or a config manager: never a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hup_and_wait(svc: &Service, accepted: u64, rejected: u64) {
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = svc.reload_stats();
        if st.accepted == accepted && st.rejected == rejected {
            return;
        }
        assert!(st.accepted <= accepted && st.rejected <= rejected, "unexpected outcome: {st:?}");
        assert!(Instant::now() < deadline, "SIGHUP not handled: {st:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sighup_applies_a_good_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ailurus.toml");
    write_config(&file, "[reduce]\nm = 100\n");
    let initial = Config::load(&file).unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind(tmp.path().join("notify.sock")).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let notifier = Notifier::to_socket(tmp.path().join("notify.sock").as_os_str(), None).unwrap();
    let svc =
        Service::install(initial.clone(), loader_for(Some(file.clone())), ServiceOptions::default(), notifier).unwrap();
    let status = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // The pipeline's view: the config it runs with, replaced only by what poll_reload delivers.
    let mut running = initial;
    let mut apply = |svc: &Service| {
        if let Some(new) = svc.poll_reload() {
            running = new;
        }
        running.clone()
    };

    // A good config: budget, sinks and reducer knobs change.
    write_config(&file, "[reduce]\nm = 64\n[budget]\ntarget_ms = 900.0\n[sink.http]\nenabled = true\nport = 0\n");
    hup_and_wait(&svc, 1, 0);
    assert_eq!(status(), "STATUS=config reloaded\n");
    let old = svc.current_config();
    let cfg = apply(&svc);
    assert_eq!((cfg.reduce.m, cfg.budget.target_ms, cfg.sink.http.enabled), (64, 900.0, true));
    assert_eq!(*old, cfg);
    let plan = reload_plan(&Config::from_str("[reduce]\nm = 100\n", "x", Path::new(".")).unwrap(), &cfg);
    assert!(plan.reduce && plan.budget && plan.sinks && plan.restart_needed.is_empty(), "{plan:?}");

    // Broken configs: a type error, invalid values (every problem named), an unreadable file.
    let broken: [(&str, &[&str]); 3] = [
        ("[reduce]\nm = \"many\"\n", &["ailurus.toml", "line 2"]),
        (
            "[sink.http]\nport = 80000\n[sink.socket]\nqueue = 0\n",
            &["2 problem(s)", "[sink.http] port: 80000 is not a port", "[sink.socket] queue: must be >= 1"],
        ),
        ("", &[]),
    ];
    for (i, (text, want)) in broken.iter().enumerate() {
        if text.is_empty() {
            std::fs::remove_file(&file).unwrap();
        } else {
            write_config(&file, text);
        }
        hup_and_wait(&svc, 1, i as u64 + 1);
        assert_eq!(status(), "STATUS=config reload rejected; keeping the current config\n");
        let err = svc.reload_stats().last_rejection.unwrap().to_string();
        assert!(!err.contains('\n'), "one line: {err}");
        for w in *want {
            assert!(err.contains(w), "{err:?} lacks {w:?}");
        }
        assert!(svc.poll_reload().is_none(), "nothing delivered for a broken config");
        let cfg = apply(&svc);
        assert_eq!((cfg.reduce.m, cfg.budget.enabled), (64, true), "the old config stays in force");
        assert_eq!(*svc.current_config(), cfg);
    }

    // Fixed again: delivered; of two quick reloads only the newest reaches the pipeline.
    write_config(&file, "[reduce]\nm = 32\n");
    hup_and_wait(&svc, 2, 3);
    write_config(&file, "[reduce]\nm = 16\n");
    hup_and_wait(&svc, 3, 3);
    assert_eq!(apply(&svc).reduce.m, 16);
    assert!(svc.poll_reload().is_none());
}
