//! The http sink: every route returns what it promises, under 50 concurrent clients too, with
//! and without a status provider; a client that stops reading does not stall it; dropping it
//! frees the port for the next one (config reload).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ailurus::frame::{Frame, Mask};
use ailurus::sink::http::{HttpConfig, HttpSink};
use ailurus::sink::{Output, Sink};
use ailurus::status::{Health, StatusProvider};

const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 client: one request per connection, body by Content-Length.
fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let split = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed inside the headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut resp = Resp { status, head, body: buf[split + 4..].to_vec() };
    let len: usize = resp.header("Content-Length").and_then(|v| v.parse().ok()).expect("Content-Length");
    if method != "HEAD" {
        while resp.body.len() < len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("connection closed inside the body"));
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(resp.body.len(), len);
    }
    Ok(resp)
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A frame whose mask encodes its sequence number: the first 16 pixels are the bits of `seq`,
/// the rest a pattern derived from it. A torn or mixed-up image cannot pass `check_mask`.
pub fn output(seq: u64, w: u32, h: u32) -> Output {
    let mut f = Frame::new(seq, w, h);
    for (i, px) in f.rgb.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((i as u32 % w) as u8, (i as u32 / w) as u8);
        px.copy_from_slice(&[x.wrapping_mul(2), y.wrapping_mul(2), 128]);
    }
    Output {
        frame: Arc::new(f),
        mask: Arc::new(Mask { width: w, height: h, classes: mask_for(seq, w, h), scores: vec![], num_classes: 2 }),
        m: 256,
        input_size: 448,
        latency: Duration::from_millis(40),
        partition: None,
        target_ms: 0.0,
    }
}

fn mask_for(seq: u64, w: u32, h: u32) -> Vec<u8> {
    (0..(w * h) as u64)
        .map(|i| if i < 16 { (seq >> i & 1) as u8 } else { (i * 7 + seq).is_multiple_of(3) as u8 })
        .collect()
}

/// Decode a served mask PNG and check it is exactly the mask of the frame it claims to be.
fn check_mask(png: &[u8], w: u32, h: u32) -> u64 {
    let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (w, h));
    let ids: Vec<u8> = img.into_raw().iter().map(|&v| (v == 255) as u8).collect();
    let seq = (0..16).map(|i| (ids[i] as u64) << i).sum();
    assert!(ids == mask_for(seq, w, h), "mask of frame {seq} is not the one published");
    seq
}

fn sink(threads: usize, stale_after_s: f64, status: Option<Arc<dyn StatusProvider>>) -> (HttpSink, SocketAddr) {
    let cfg = HttpConfig { enabled: true, port: 0, threads, stale_after_s, refresh_ms: 200, ..Default::default() };
    let s = HttpSink::build(&cfg, status).unwrap();
    let addr = s.local_addr();
    (s, addr)
}

#[test]
fn every_route_returns_what_it_promises() {
    let (mut s, addr) = sink(2, 3600.0, None);
    assert!(addr.ip().is_loopback(), "binds 127.0.0.1 by default");
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (503, "starting: no frame yet\n"));
    for p in ["/mask.png", "/frame.jpg", "/overlay.jpg", "/latest.json"] {
        assert_eq!(get(addr, p).status, 503, "{p} before the first frame");
    }
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("Content-Type").unwrap().starts_with("text/html"));
    let html = page.text();
    assert!(
        html.contains("<img id=\"frame\" src=\"/overlay.jpg\"") && html.contains("const REFRESH_MS = 200;"),
        "{html}"
    );
    assert_eq!(get(addr, "/nope").status, 404);
    assert_eq!(request(addr, "POST", "/mask.png").unwrap().status, 405);

    let a = output(5, 64, 48);
    s.publish(&a).unwrap();
    let r = get(addr, "/mask.png");
    assert_eq!((r.status, r.header("Content-Type")), (200, Some("image/png")));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert_eq!(check_mask(&r.body, 64, 48), 5);
    let r = get(addr, "/frame.jpg");
    assert_eq!((r.status, r.header("Content-Type")), (200, Some("image/jpeg")));
    let jpg = image::load_from_memory_with_format(&r.body, image::ImageFormat::Jpeg).unwrap().to_rgb8();
    assert_eq!(jpg.dimensions(), (64, 48));
    let mean_err = |got: &[u8], want: &[u8]| {
        got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).abs()).sum::<f64>() / want.len() as f64
    };
    assert!(mean_err(jpg.as_raw(), &a.frame.rgb) < 4.0, "frame.jpg is the frame");
    let r = get(addr, "/overlay.jpg?seq=5");
    let ov = image::load_from_memory_with_format(&r.body, image::ImageFormat::Jpeg).unwrap().to_rgb8();
    let want = ailurus::sink::render::overlay(&a.frame, &a.mask);
    // The mask pattern is high-frequency, so JPEG blurs it: the overlay must be much closer to
    // the blended image than to the bare frame.
    let (e_ov, e_frame) = (mean_err(ov.as_raw(), want.as_raw()), mean_err(ov.as_raw(), &a.frame.rgb));
    assert!(e_ov < 0.5 * e_frame, "overlay.jpg is the overlay: error {e_ov:.1} vs {e_frame:.1} to the bare frame");
    let r = get(addr, "/latest.json");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let j = r.text();
    assert!(
        j.starts_with(
            "{\"seq\":5,\"width\":64,\"height\":48,\"num_classes\":2,\"m\":256,\"input_size\":448,\"latency_ms\":40.0,"
        ),
        "{j}"
    );
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let head = request(addr, "HEAD", "/mask.png").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // A new frame replaces the cached images.
    s.publish(&output(6, 64, 48)).unwrap();
    assert_eq!(check_mask(&get(addr, "/mask.png").body, 64, 48), 6);
    let m = get(addr, "/metrics");
    assert!(m.header("Content-Type").unwrap().starts_with("text/plain; version=0.0.4"));
    let m = m.text();
    for line in [
        "ailurus_http_frames_published_total 2\n",
        "ailurus_http_requests_total{path=\"/mask.png\"} 5\n",
        "ailurus_http_requests_total{path=\"other\"} 1\n",
        "ailurus_http_latest_seq 6\n",
        "ailurus_http_latest_m 256\n",
        "ailurus_http_latest_latency_seconds 0.04\n",
    ] {
        assert!(m.contains(line), "metrics lack {line:?}:\n{m}");
    }
}

#[test]
fn without_frames_for_a_while_health_says_inference_is_stuck() {
    let (mut s, addr) = sink(1, 0.05, None);
    s.publish(&output(1, 8, 8)).unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (503, "inference stuck: no frame for 0s\n"));
    s.publish(&output(2, 8, 8)).unwrap();
    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn latest_json_long_polls_until_another_frame_is_there() {
    let (mut s, addr) = sink(2, 3600.0, None);
    s.publish(&output(1, 8, 8)).unwrap();
    // Another frame than the one the page shows: answered at once.
    assert!(get(addr, "/latest.json?after=0").text().starts_with("{\"seq\":1,"));
    // The frame the page shows: the answer waits for the next publish.
    let waiting = std::thread::spawn(move || get(addr, "/latest.json?after=1").text());
    std::thread::sleep(Duration::from_millis(50));
    s.publish(&output(2, 8, 8)).unwrap();
    assert!(waiting.join().unwrap().starts_with("{\"seq\":2,"));
    // Nothing new: the same frame, after the 2 s limit.
    let t = Instant::now();
    assert!(get(addr, "/latest.json?after=2").text().starts_with("{\"seq\":2,"));
    assert!(t.elapsed() >= Duration::from_secs(2));
}

struct FakeStatus {
    camera_up: AtomicBool,
}

impl StatusProvider for FakeStatus {
    fn prometheus(&self) -> String {
        "# HELP ailurus_fps Frames per second.\n# TYPE ailurus_fps gauge\nailurus_fps 12.5".into()
    }
    fn health(&self) -> Health {
        if self.camera_up.load(Ordering::Relaxed) {
            Health::Ok
        } else {
            Health::Unavailable("camera down: /dev/video9: no such device".into())
        }
    }
}

#[test]
fn a_status_provider_feeds_metrics_and_health() {
    let status = Arc::new(FakeStatus { camera_up: AtomicBool::new(true) });
    let (_s, addr) = sink(1, 3600.0, Some(status.clone()));
    // The provider decides health, even before the first frame.
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    status.camera_up.store(false, Ordering::Relaxed);
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (503, "camera down: /dev/video9: no such device\n"));
    let m = get(addr, "/metrics").text();
    assert!(
        m.starts_with(
            "# HELP ailurus_fps Frames per second.\n# TYPE ailurus_fps gauge\nailurus_fps 12.5\n# HELP ailurus_http_"
        ),
        "{m}"
    );
}

#[test]
fn fifty_concurrent_clients_get_whole_consistent_answers() {
    let (s, addr) = sink(4, 3600.0, None);
    let s = Arc::new(std::sync::Mutex::new(s));
    let (w, h) = (160, 120);
    s.lock().unwrap().publish(&output(0, w, h)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seq = 1;
            // Bounded: at most 20 s of frames, about one per millisecond.
            let end = Instant::now() + TIMEOUT;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                s.lock().unwrap().publish(&output(seq, w, h)).unwrap();
                seq += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            seq
        })
    };
    let routes = ["/mask.png", "/frame.jpg", "/overlay.jpg", "/latest.json", "/metrics", "/healthz", "/"];
    let per_client = 8;
    let (tx, rx) = std::sync::mpsc::channel();
    for c in 0..50 {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let res = std::panic::catch_unwind(|| {
                for k in 0..per_client {
                    let path = routes[(c + k) % routes.len()];
                    let r = request(addr, "GET", path).unwrap_or_else(|e| panic!("client {c} GET {path}: {e}"));
                    assert_eq!(r.status, 200, "client {c} GET {path}");
                    match path {
                        "/mask.png" => {
                            check_mask(&r.body, w, h);
                        }
                        "/frame.jpg" | "/overlay.jpg" => {
                            let img = image::load_from_memory_with_format(&r.body, image::ImageFormat::Jpeg).unwrap();
                            assert_eq!((img.width(), img.height()), (w, h));
                        }
                        "/latest.json" => assert!(r.text().contains("\"width\":160,\"height\":120"), "{}", r.text()),
                        "/metrics" => {
                            assert!(r.text().contains("ailurus_http_frames_published_total "))
                        }
                        "/healthz" => assert_eq!(r.text(), "ok\n"),
                        _ => assert!(r.text().contains("<img")),
                    }
                }
            });
            let _ = tx.send(res.is_ok());
        });
    }
    drop(tx);
    let mut ok = 0;
    for _ in 0..50 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(true) => ok += 1,
            Ok(false) => {}
            Err(e) => panic!("clients did not finish: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let frames = publisher.join().unwrap();
    assert_eq!(ok, 50, "every client got only valid answers (see the panics above)");
    assert!(frames > 1, "frames were published while clients were served");
    // Every request was counted once, under its route.
    let m = get(addr, "/metrics").text();
    let total: u64 = m
        .lines()
        .filter(|l| l.starts_with("ailurus_http_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 50 * per_client as u64 + 1, "{m}");
}

#[test]
fn a_client_that_stops_reading_neither_stalls_publish_nor_the_port() {
    let (mut s, addr) = sink(2, 3600.0, None);
    // A frame of incompressible noise: its JPEG is far larger than the socket buffers.
    let mut big = output(1, 4000, 3000);
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in Arc::get_mut(&mut big.frame).unwrap().rgb.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    s.publish(&big).unwrap();
    let mut stalled = TcpStream::connect(addr).unwrap();
    write!(stalled, "GET /frame.jpg HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    // Wait (bounded) until the stalled download has started: its headers arrive first.
    stalled.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut first = [0u8; 12];
    stalled.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Another worker still serves, and publishing goes on.
    for seq in 2..50 {
        s.publish(&output(seq, 32, 16)).unwrap();
    }
    assert_eq!(check_mask(&get(addr, "/mask.png").body, 32, 16), 49);
    // Dropping the sink leaves the stuck worker behind, bounded, and frees the port.
    let t = Instant::now();
    drop(s);
    assert!(t.elapsed() < Duration::from_secs(5), "drop took {:?}", t.elapsed());
    let cfg =
        HttpConfig { enabled: true, address: addr.ip().to_string(), port: addr.port() as u32, ..Default::default() };
    let mut again = HttpSink::build(&cfg, None).expect("the port is free again");
    again.publish(&output(77, 8, 8)).unwrap();
    assert_eq!(check_mask(&get(addr, "/mask.png").body, 8, 8), 77);
    drop(stalled);
}

/// `/clusters.png` draws the latest frame's partition (the same picture as
/// `sink::clusters::draw`), says why not for an unreduced frame; `/history.json` has one point
/// per published frame; `/streams.json` lists the one stream, whose routes are also under
/// `/streams/default/` (`/s/default/`); the page is served with a same-origin-only CSP and names no outside URL.
#[test]
fn clusters_history_streams_and_the_page_policy() {
    use ailurus::sink::clusters::{draw, view_size, INK, PAPER};
    let (mut s, addr) = sink(2, 3600.0, None);
    assert_eq!(get(addr, "/clusters.png").status, 503, "no frame yet");
    let j: serde_json::Value = serde_json::from_slice(&get(addr, "/history.json").body).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 0);

    s.publish(&output(1, 64, 48)).unwrap();
    let r = get(addr, "/clusters.png");
    assert_eq!(r.status, 404);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    assert!(r.text().starts_with("frame 1 ran unreduced (M = N = 256 tokens at 448px)"), "{}", r.text());

    let p = crate::clusters::random_partition(&mut crate::clusters::Rng(9), (16, 16), 64, 224);
    let with = |seq| Output { partition: Some(Arc::new(p.clone())), m: 64, input_size: 224, ..output(seq, 200, 150) };
    s.publish(&with(2)).unwrap();
    let r = get(addr, "/clusters.png?seq=2");
    assert_eq!((r.status, r.header("Content-Type")), (200, Some("image/png")));
    let got = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png).unwrap().to_rgb8();
    let (w, h) = view_size(&p, 200, 150);
    assert_eq!(got, draw(&p, w, h).unwrap(), "the served image is the drawing of the published partition");
    let fills: std::collections::HashSet<[u8; 3]> =
        got.pixels().map(|px| px.0).filter(|&c| c != INK && c != PAPER).collect();
    assert_eq!(fills.len(), 64);
    assert_eq!(get(addr, "/s/default/clusters.png").body, r.body);
    let r = get(addr, "/s/nope/clusters.png");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("/streams.json"), "{}", r.text());
    let l: serde_json::Value = serde_json::from_slice(&get(addr, "/s/default/latest.json").body).unwrap();
    assert_eq!((l["seq"].as_u64(), l["reduced"].as_bool(), l["n"].as_u64()), (Some(2), Some(true), Some(256)));

    // Sequence numbers 3..=9, then 12: two frames the sink never saw.
    for seq in (3..=9).chain([12]) {
        s.publish(&with(seq)).unwrap();
    }
    let j: serde_json::Value = serde_json::from_slice(&get(addr, "/history.json").body).unwrap();
    let cols: Vec<&str> = j["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let col = |name| cols.iter().position(|&c| c == name).unwrap();
    let rows = j["rows"].as_array().unwrap();
    let of = |name| rows.iter().map(|r| r[col(name)].as_f64().unwrap()).collect::<Vec<_>>();
    assert_eq!(of("gen"), (1..=10).map(f64::from).collect::<Vec<_>>(), "one point per published frame");
    assert_eq!(of("seq"), [1., 2., 3., 4., 5., 6., 7., 8., 9., 12.]);
    assert_eq!(of("dropped").iter().sum::<f64>(), 2.0);
    assert_eq!((of("m")[0], of("m")[9], of("n")[9], of("input_size")[9]), (256., 64., 256., 224.));
    let j: serde_json::Value = serde_json::from_slice(&get(addr, "/s/default/history.json?after=7").body).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 3);
    let st: serde_json::Value = serde_json::from_slice(&get(addr, "/streams.json").body).unwrap();
    assert_eq!(st["streams"], serde_json::json!([{"name": "default", "prefix": "/streams/default"}]));
    assert_eq!(get(addr, "/streams/default/clusters.png").body, get(addr, "/clusters.png").body);

    let page = get(addr, "/");
    let csp = page.header("Content-Security-Policy").expect("the page has a CSP");
    assert!(csp.starts_with("default-src 'self';") && !csp.contains("http"), "{csp}");
    let html = page.text();
    for outside in ["http:", "https:", "//cdn", "src=\"//", "href=\"//", "ws:"] {
        assert!(!html.contains(outside), "the page names an outside URL ({outside})");
    }
    assert_eq!(get(addr, "/s/default/").text(), html);
}

/// Two named streams: each has its own latest frame, images, history and page under
/// `/streams/NAME/`; `/streams.json` lists both in order of first frame; the unprefixed routes
/// show the latest of either; an unknown name is a 404 that lists the real ones.
#[test]
fn named_streams_have_their_own_routes() {
    let (mut s, addr) = sink(2, 3600.0, None);
    let named = |seq, name: &str, w, h| {
        let mut o = output(seq, w, h);
        let mut f = (*o.frame).clone();
        f.stream = name.into();
        o.frame = Arc::new(f);
        o
    };
    s.publish(&named(1, "door", 64, 48)).unwrap();
    s.publish(&named(1, "yard", 80, 60)).unwrap();
    s.publish(&named(2, "door", 64, 48)).unwrap();
    let st: serde_json::Value = serde_json::from_slice(&get(addr, "/streams.json").body).unwrap();
    assert_eq!(
        st["streams"],
        serde_json::json!([{"name": "door", "prefix": "/streams/door"}, {"name": "yard", "prefix": "/streams/yard"}])
    );
    let latest = |path| serde_json::from_slice::<serde_json::Value>(&get(addr, path).body).unwrap();
    let (d, y, any) = (latest("/streams/door/latest.json"), latest("/s/yard/latest.json"), latest("/latest.json"));
    assert_eq!((d["seq"].as_u64(), d["stream"].as_str(), d["width"].as_u64()), (Some(2), Some("door"), Some(64)));
    assert_eq!((y["seq"].as_u64(), y["stream"].as_str(), y["width"].as_u64()), (Some(1), Some("yard"), Some(80)));
    assert_eq!(any["stream"].as_str(), Some("door"), "the unprefixed routes show the latest of any");
    assert_eq!(check_mask(&get(addr, "/streams/yard/mask.png").body, 80, 60), 1);
    assert_eq!(check_mask(&get(addr, "/streams/door/mask.png").body, 64, 48), 2);
    let rows = |path| latest(path)["rows"].as_array().unwrap().len();
    assert_eq!(
        (rows("/streams/door/history.json"), rows("/streams/yard/history.json"), rows("/history.json")),
        (2, 1, 3)
    );
    assert_eq!(get(addr, "/streams/yard/").status, 200);
    let r = get(addr, "/streams/gate/latest.json");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("door yard"), "{}", r.text());
}
