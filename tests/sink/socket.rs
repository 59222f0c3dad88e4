//! The socket sink: the wire format, a client that never reads must not slow `publish` down
//! (nor the other clients), slow clients are disconnected, and the socket file's life cycle.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ailurus::frame::{Frame, Mask};
use ailurus::sink::socket::{SocketConfig, SocketSink, HEADER_LEN, MAGIC, VERSION};
use ailurus::sink::{Output, Sink};

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn output(seq: u64, w: u32, h: u32, classes: u32, rng: &mut u64) -> Output {
    let mut f = Frame::new(seq, w, h);
    f.captured_wall = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + seq);
    let ids = (0..w * h).map(|_| (next(rng) % classes as u64) as u8).collect();
    Output {
        frame: Arc::new(f),
        mask: Arc::new(Mask { width: w, height: h, classes: ids, scores: vec![], num_classes: classes }),
        m: 100 + seq as usize,
        input_size: 448,
        latency: Duration::from_micros(2_000 + seq),
        partition: None,
        target_ms: 0.0,
    }
}

fn cfg(path: &Path, write_timeout_ms: u64) -> SocketConfig {
    SocketConfig { enabled: true, path: path.to_path_buf(), write_timeout_ms, ..SocketConfig::default() }
}

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Msg {
    seq: u64,
    captured_us: u64,
    width: u32,
    height: u32,
    classes: u32,
    m: u32,
    latency_us: u32,
    ids: Vec<u8>,
}

fn read_msg(s: &mut UnixStream) -> std::io::Result<Msg> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h)?;
    assert_eq!(h[0..4], MAGIC);
    assert_eq!(u16::from_le_bytes([h[4], h[5]]), VERSION);
    assert_eq!(u16::from_le_bytes([h[6], h[7]]) as usize, HEADER_LEN);
    let u32at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    let mut ids = vec![0; u32at(44) as usize];
    s.read_exact(&mut ids)?;
    Ok(Msg {
        seq: u64at(8),
        captured_us: u64at(16),
        width: u32at(24),
        height: u32at(28),
        classes: u32at(32),
        m: u32at(36),
        latency_us: u32at(40),
        ids,
    })
}

#[test]
fn a_client_that_never_reads_does_not_slow_publish_or_other_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.sock");
    // A long write timeout: the stalled client stays connected for the whole test.
    let mut sink = SocketSink::build(&cfg(&path, 600_000), Path::new(".")).unwrap();
    let _stalled = UnixStream::connect(&path).unwrap();
    let mut good = UnixStream::connect(&path).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    wait_for("two clients", || sink.client_count() == 2);

    // The publisher runs on its own thread; the test thread only waits for it, bounded, so a
    // publish that blocked on the stalled client fails the test instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<()>();
    let frames = 60u64;
    let publisher = std::thread::spawn(move || {
        let mut rng = 1;
        let mut sent = Vec::new();
        for seq in 0..frames {
            // 300 KB per mask: the stalled client's socket buffer fills within a few frames.
            let out = output(seq, 640, 480, if seq % 2 == 0 { 2 } else { 21 }, &mut rng);
            sink.publish(&out).unwrap();
            sent.push(out);
            // Lock-step with the reading client, so it never falls behind.
            if ack_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                break;
            }
        }
        done_tx.send((sink, sent)).unwrap();
    });
    let mut got = Vec::new();
    for _ in 0..frames {
        got.push(read_msg(&mut good).expect("the reading client gets every mask"));
        let _ = ack_tx.send(());
    }
    let (sink, sent) = done_rx.recv_timeout(Duration::from_secs(30)).expect("publish never blocks");
    publisher.join().unwrap();
    for (m, out) in got.iter().zip(&sent) {
        assert_eq!(m.seq, out.frame.seq);
        assert_eq!(m.captured_us, 1_700_000_000_000_000 + out.frame.seq);
        assert_eq!((m.width, m.height, m.classes), (640, 480, out.mask.num_classes));
        assert_eq!(m.m as usize, out.m);
        assert_eq!(m.latency_us as u64, 2_000 + out.frame.seq);
        assert!(m.ids == out.mask.classes, "payload of frame {}", m.seq);
    }
    let st = sink.stats();
    assert_eq!(sink.client_count(), 2, "the stalled client is still connected");
    assert!(st.skipped.load(Ordering::Relaxed) >= frames - 10, "the stalled client skipped frames: {st:?}");
    // Dropping the sink must not hang on the writer blocked on the stalled client.
    let t = std::thread::spawn(move || drop(sink));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.is_finished() {
        assert!(Instant::now() < deadline, "dropping the sink hung");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!path.exists(), "socket file removed on drop");
}

#[test]
fn dropping_the_sink_delivers_the_queued_masks_then_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("drain.sock");
    let c = SocketConfig { queue: 16, ..cfg(&path, 10_000) };
    let mut sink = SocketSink::build(&c, Path::new(".")).unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    wait_for("the client", || sink.client_count() == 1);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(m) = read_msg(&mut client) {
            got.push(m.seq);
        }
        let mut rest = Vec::new();
        (got, client.read_to_end(&mut rest).map(|_| rest.len()))
    });
    // 10 masks of 300 KB: far more than the socket buffers hold when the sink is dropped.
    let mut rng = 9;
    for seq in 0..10 {
        sink.publish(&output(seq, 640, 480, 2, &mut rng)).unwrap();
    }
    drop(sink);
    let (got, rest) = reader.join().unwrap();
    assert_eq!(got, (0..10).collect::<Vec<u64>>(), "every queued mask, whole");
    assert_eq!(rest.unwrap(), 0, "then the end of the stream, nothing torn");
}

#[test]
fn a_slow_client_is_disconnected_after_the_write_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("slow.sock");
    let mut sink = SocketSink::build(&cfg(&path, 50), Path::new(".")).unwrap();
    let mut stalled = UnixStream::connect(&path).unwrap();
    wait_for("the client", || sink.client_count() == 1);
    let mut rng = 5;
    let mut seq = 0;
    // Keep publishing until the writer gives up on the client (bounded by wait_for's deadline).
    wait_for("the disconnect", || {
        sink.publish(&output(seq, 640, 480, 2, &mut rng)).unwrap();
        seq += 1;
        std::thread::sleep(Duration::from_millis(5));
        sink.client_count() == 0
    });
    assert_eq!(sink.stats().disconnected.load(Ordering::Relaxed), 1);
    // The client sees whole messages, then the end of the stream.
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    assert!(rest.len() >= HEADER_LEN && rest.len() < seq as usize * (HEADER_LEN + 640 * 480));
    assert_eq!(rest[0..4], MAGIC);
}

#[test]
fn socket_file_life_cycle_and_client_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sub/dir/m.sock");
    // A stale socket file (nobody listening) is replaced.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let c = SocketConfig { max_clients: 1, mode: 0o600, ..cfg(&path, 1000) };
    let sink = SocketSink::build(&c, Path::new(".")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // A live one (another sink listening) is an error naming the path.
    let err = SocketSink::build(&c, Path::new(".")).err().expect("second bind refused").to_string();
    assert!(err.contains("another process is listening") && err.contains("m.sock"), "{err}");
    // A regular file in the way is an error too.
    let file = tmp.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let err = SocketSink::build(&cfg(&file, 1000), Path::new(".")).err().unwrap().to_string();
    assert!(err.contains("not a socket"), "{err}");
    // The liveness probe of the refused build connected and left; a client that hangs up is
    // forgotten at once, without waiting for a publish to fail on it.
    wait_for("the probe to be forgotten", || {
        sink.stats().connected.load(Ordering::Relaxed) == 1 && sink.client_count() == 0
    });
    // Beyond max_clients a client is accepted, then closed.
    let _first = UnixStream::connect(&path).unwrap();
    wait_for("the first client", || sink.client_count() == 1);
    let mut second = UnixStream::connect(&path).unwrap();
    second.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(second.read(&mut buf).unwrap(), 0, "refused client sees end of stream");
    assert_eq!(sink.stats().refused.load(Ordering::Relaxed), 1);
    drop(sink);
    assert!(!path.exists());
}

/// One message as a client that knows the named-stream header reads it: (header length,
/// stream name, seq, payload).
fn read_named(s: &mut UnixStream) -> (usize, String, u64, Vec<u8>) {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0..4], MAGIC);
    let len = u16::from_le_bytes([h[6], h[7]]) as usize;
    let mut extra = vec![0; len - HEADER_LEN];
    s.read_exact(&mut extra).unwrap();
    let name = String::from_utf8(extra.iter().copied().take_while(|&b| b != 0).collect()).unwrap();
    let mut ids = vec![0; u32::from_le_bytes(h[44..48].try_into().unwrap()) as usize];
    s.read_exact(&mut ids).unwrap();
    (len, name, u64::from_le_bytes(h[8..16].try_into().unwrap()), ids)
}

#[test]
fn named_streams_carry_their_names_in_the_80_byte_header() {
    use ailurus::sink::socket::NAMED_HEADER_LEN;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("n.sock");
    let mut sink = SocketSink::build(&SocketConfig { queue: 16, ..cfg(&path, 10_000) }, Path::new(".")).unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    wait_for("a client", || sink.client_count() == 1);
    // Two named streams taking turns (one name of the longest allowed length), then the one
    // unnamed `[source]`'s frame: the 48-byte header as before.
    let long = "a".repeat(32);
    let names = ["front", long.as_str(), "front", long.as_str(), ""];
    let mut rng = 7;
    let mut sent = Vec::new();
    for (seq, name) in names.iter().enumerate() {
        let mut out = output(seq as u64, 16 + seq as u32, 9, 2, &mut rng);
        let mut f = Frame::new(seq as u64, out.mask.width, out.mask.height);
        f.stream = (*name).into();
        f.stream_index = usize::from(name.len() == 32);
        out.frame = Arc::new(f);
        sink.publish(&out).unwrap();
        sent.push(out);
    }
    for (out, name) in sent.iter().zip(names) {
        let (len, got, seq, ids) = read_named(&mut client);
        assert_eq!(len, if name.is_empty() { HEADER_LEN } else { NAMED_HEADER_LEN }, "frame {seq}");
        assert_eq!(NAMED_HEADER_LEN, 80);
        assert_eq!((got.as_str(), seq), (name, out.frame.seq));
        assert!(ids == out.mask.classes, "payload of frame {seq} follows its header");
    }
}
