//! tools/socket_client.py (the documented example client) reads, with numpy, exactly the masks
//! the files sink writes for the same frames.
//!
//! Needs a Python with numpy: $AILURUS_PYTHON, else .cache/venv/bin/python (tools/setup.sh),
//! else python3. Without one the test fails and says so; set AILURUS_ALLOW_NO_PYTHON=1 to
//! turn that into a skip with a message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ailurus::frame::{Frame, Mask};
use ailurus::sink::files::{FilesConfig, FilesSink};
use ailurus::sink::socket::{SocketConfig, SocketSink};
use ailurus::sink::{Output, Sink};

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn output(seq: u64, w: u32, h: u32, classes: u32, rng: &mut u64) -> Output {
    let mut f = Frame::new(seq, w, h);
    f.rgb.iter_mut().for_each(|b| *b = next(rng) as u8);
    let ids = (0..w * h).map(|_| (next(rng) % classes as u64) as u8).collect();
    Output {
        frame: Arc::new(f),
        mask: Arc::new(Mask { width: w, height: h, classes: ids, scores: vec![], num_classes: classes }),
        m: 77,
        input_size: 448,
        latency: Duration::from_millis(12),
        partition: None,
        target_ms: 0.0,
    }
}

fn python_with_numpy() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = std::env::var_os("AILURUS_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join(".cache/venv/bin/python"), PathBuf::from("python3")]);
    for py in candidates {
        let ok = Command::new(&py).args(["-c", "import numpy"]).stderr(Stdio::null()).status();
        if ok.is_ok_and(|s| s.success()) {
            return Some(py);
        }
    }
    None
}

/// A `.npy` file holding a C-order uint8 array: (shape, data).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        _ => (u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).unwrap();
    assert!(header.contains("'descr': '|u1'") && header.contains("'fortran_order': False"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    (shape, b[start + hlen..].to_vec())
}

#[test]
fn python_socket_client_reads_the_files_sinks_masks() {
    let Some(python) = python_with_numpy() else {
        let msg = "no Python with numpy found (tried $AILURUS_PYTHON, .cache/venv/bin/python, python3); \
                   run tools/setup.sh or set AILURUS_PYTHON";
        if std::env::var_os("AILURUS_ALLOW_NO_PYTHON").is_some() {
            eprintln!("SKIPPED: {msg}");
            return;
        }
        panic!("{msg} (or set AILURUS_ALLOW_NO_PYTHON=1 to skip this test)");
    };
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("masks.sock");
    let files_dir = tmp.path().join("files");
    let npy_dir = tmp.path().join("npy");
    let scfg =
        SocketConfig { enabled: true, path: sock.clone(), queue: 16, write_timeout_ms: 30_000, ..Default::default() };
    let mut socket_sink = SocketSink::build(&scfg, Path::new(".")).unwrap();
    let fcfg = FilesConfig { enabled: true, dir: files_dir.clone(), overlay: false, keep: 0, max_bytes: 0 };
    let mut files_sink = FilesSink::build(&fcfg, Path::new(".")).unwrap();

    let frames = 6u64;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/socket_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg("--socket")
        .arg(&sock)
        .args(["--count", &frames.to_string(), "--timeout", "30", "--save"])
        .arg(&npy_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket_sink.client_count() == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("client exited early ({status}): {}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(Instant::now() < deadline, "the Python client did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut rng = 2024;
    let mut sent = Vec::new();
    for seq in 0..frames {
        let classes = if seq % 2 == 0 { 2 } else { 21 };
        let out = output(seq + 40, 31 + seq as u32 * 7, 17 + seq as u32 * 3, classes, &mut rng);
        socket_sink.publish(&out).unwrap();
        files_sink.publish(&out).unwrap();
        sent.push(out);
    }
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Python client did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), frames as usize, "{stdout}");
    assert!(stdout.starts_with("seq 40: 31x17, 2 classes, M=77, latency 12.0 ms"), "{stdout}");

    for o in &sent {
        let seq = o.frame.seq;
        let (shape, ids) = read_npy(&npy_dir.join(format!("{seq:08}.npy")));
        assert_eq!(shape, [o.mask.height as usize, o.mask.width as usize]);
        let png = image::open(files_dir.join(format!("{seq:08}.mask.png"))).unwrap().to_luma8();
        assert_eq!(png.dimensions(), (o.mask.width, o.mask.height));
        // The files sink scales saliency ids (0/1) to 0/255 so the PNG is viewable.
        let scale = if o.mask.num_classes <= 2 { 255 } else { 1 };
        let from_client: Vec<u8> = ids.iter().map(|&c| c * scale).collect();
        assert!(from_client == png.into_raw(), "frame {seq}: client mask differs from the files sink's");
        assert!(ids == o.mask.classes, "frame {seq}: client mask differs from the published one");
    }
}

#[test]
fn python_socket_client_reads_the_stream_names_of_named_streams() {
    let Some(python) = python_with_numpy() else {
        if std::env::var_os("AILURUS_ALLOW_NO_PYTHON").is_some() {
            eprintln!("SKIPPED: no Python with numpy");
            return;
        }
        panic!("no Python with numpy found (or set AILURUS_ALLOW_NO_PYTHON=1 to skip this test)");
    };
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("masks.sock");
    let scfg =
        SocketConfig { enabled: true, path: sock.clone(), queue: 16, write_timeout_ms: 30_000, ..Default::default() };
    let mut sink = SocketSink::build(&scfg, Path::new(".")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/socket_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg("--socket")
        .arg(&sock)
        .args(["--count", "4", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.client_count() == 0 {
        assert!(child.try_wait().unwrap().is_none(), "the Python client exited early");
        assert!(Instant::now() < deadline, "the Python client did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut rng = 5;
    for (seq, name) in ["front", "back", "front", "back"].into_iter().enumerate() {
        let mut out = output(seq as u64, 12, 8, 2, &mut rng);
        let mut f = Frame::new(seq as u64, 12, 8);
        f.stream = name.into();
        out.frame = Arc::new(f);
        sink.publish(&out).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let heads: Vec<&str> = stdout.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(heads, ["[front] seq 0", "[back] seq 1", "[front] seq 2", "[back] seq 3"], "{stdout}");
}
