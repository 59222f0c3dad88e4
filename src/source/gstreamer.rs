//! `[source.gstreamer]`: the config of the GStreamer source and the launch lines it plays.
//!
//! Owns the config struct, its checks, and the pure choice of what to play: the launch line for
//! a URI, a Jetson CSI camera or a user's pipeline, with the hardware (Jetson `nvv4l2decoder` +
//! `nvvidconv`) or software path picked from the elements that exist. Always compiled (a config
//! naming `kind = "gstreamer"` is checked even in a build without the feature); the running
//! source, which needs GStreamer, is `gst.rs`. Must not touch GStreamer itself.

use std::path::Path;

use serde::Deserialize;

use crate::problems::Problems;

/// `[source.gstreamer]`: exactly one of `uri`, `csi` or `pipeline`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GstConfig {
    /// Any URI `uridecodebin` plays (`rtsp://`, `file://`, `http://`), or a file path
    /// (relative paths resolve like every path of the config). Empty: not used.
    pub uri: String,
    /// A Jetson CSI camera's sensor id (`nvarguscamerasrc sensor-id=N`).
    pub csi: Option<u32>,
    /// A launch line ending in `appsink name=sink`. Empty: not used.
    pub pipeline: String,
    /// Frame size to scale to (0 = as the source delivers; for `csi`: the sensor mode asked for,
    /// 1920x1080 when 0).
    pub width: u32,
    pub height: u32,
    /// At most this many frames per second (0 = as the source delivers; for `csi`: 30 when 0).
    pub fps: u32,
    /// RTSP jitter-buffer latency, milliseconds (rtspsrc `latency`).
    pub latency_ms: u32,
    /// A stream that delivers nothing for this long is treated as lost (and reopened).
    pub timeout_ms: u64,
    /// First retry delay after a loss; it doubles up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for GstConfig {
    fn default() -> Self {
        GstConfig {
            uri: String::new(),
            csi: None,
            pipeline: String::new(),
            width: 0,
            height: 0,
            fps: 0,
            latency_ms: 200,
            timeout_ms: 5000,
            backoff_min_ms: 100,
            backoff_max_ms: 5000,
        }
    }
}

impl GstConfig {
    /// Checks for `kind = "gstreamer"` (`section`: where the table is, e.g. `source.gstreamer`
    /// or `streams.front.gstreamer`).
    pub fn validate(&self, p: &mut Problems, section: &str) {
        let given = [!self.uri.is_empty(), self.csi.is_some(), !self.pipeline.is_empty()];
        let n = given.iter().filter(|g| **g).count();
        p.check(n == 1, section, "uri", || format!("give exactly one of uri, csi or pipeline ({n} given)"));
        p.check(self.width <= 8192 && self.height <= 8192, section, "width", || {
            format!("{}x{} is over 8192", self.width, self.height)
        });
        p.check((self.width == 0) == (self.height == 0), section, "height", || {
            "give both width and height, or neither".into()
        });
        p.check(self.fps <= 1000, section, "fps", || format!("{} is over 1000", self.fps));
        p.check(self.timeout_ms >= 100, section, "timeout_ms", || format!("{} must be >= 100", self.timeout_ms));
        p.check(self.backoff_min_ms >= 1, section, "backoff_min_ms", || {
            format!("{} must be >= 1", self.backoff_min_ms)
        });
        p.check(self.backoff_max_ms >= self.backoff_min_ms, section, "backoff_max_ms", || {
            format!("{} is below backoff_min_ms ({})", self.backoff_max_ms, self.backoff_min_ms)
        });
        if !self.pipeline.is_empty() {
            p.check(
                self.pipeline.contains("appsink") && self.pipeline.contains("name=sink"),
                section,
                "pipeline",
                || "must end in an appsink named `sink` (`... ! appsink name=sink`)".into(),
            );
        }
    }

    /// What to play, with a relative file path resolved against `base`.
    pub fn what(&self, base: &Path) -> Played {
        if let Some(id) = self.csi {
            return Played::Csi(id);
        }
        if !self.pipeline.is_empty() {
            return Played::Pipeline(self.pipeline.clone());
        }
        if self.uri.contains("://") {
            return Played::Uri(self.uri.clone());
        }
        let p = Path::new(&self.uri);
        Played::File(if p.is_absolute() { p.to_path_buf() } else { base.join(p) })
    }
}

/// What a `[source.gstreamer]` table plays.
#[derive(Debug, Clone, PartialEq)]
pub enum Played {
    /// A URI with a scheme (`file://` included).
    Uri(String),
    /// A file path (`uri` without a scheme).
    File(std::path::PathBuf),
    Csi(u32),
    Pipeline(String),
}

impl Played {
    /// The config key it came from, for errors.
    pub fn key(&self) -> &'static str {
        match self {
            Played::Uri(_) | Played::File(_) => "uri",
            Played::Csi(_) => "csi",
            Played::Pipeline(_) => "pipeline",
        }
    }

    /// A local file (EOS ends or loops it; errors are not worth retrying).
    pub fn is_file(&self) -> bool {
        match self {
            Played::File(_) => true,
            Played::Uri(u) => u.starts_with("file:"),
            _ => false,
        }
    }

    /// A network stream (EOS means the server ended it: reconnect).
    pub fn is_network(&self) -> bool {
        matches!(self, Played::Uri(u) if !u.starts_with("file:"))
    }

    /// Live sources are taken as they come (appsink `sync=false`); files and pipelines play at
    /// their own rate (`sync=true`), not as fast as they decode.
    pub fn sync(&self) -> bool {
        !self.is_network() && !matches!(self, Played::Csi(_))
    }

    /// For logs and health: the URI, the file, `csi sensor N` or `pipeline`.
    pub fn describe(&self) -> String {
        match self {
            Played::Uri(u) => u.clone(),
            Played::File(p) => p.display().to_string(),
            Played::Csi(id) => format!("csi sensor {id}"),
            Played::Pipeline(p) => {
                let short: String = p.chars().take(60).collect();
                format!("\"{short}{}\"", if short.len() < p.len() { "..." } else { "" })
            }
        }
    }
}

/// Decode and conversion: the Jetson's hardware blocks, or the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// `nvv4l2decoder` (ranked up so decodebin picks it) and `nvvidconv` to system memory.
    Hardware,
    /// `avdec_*` (whatever decodebin picks) and `videoconvert`/`videoscale`.
    Software,
}

/// The hardware path when both Jetson elements exist (a CSI camera needs `nvvidconv` anyway).
pub fn choose_path(has: &dyn Fn(&str) -> bool) -> DecodePath {
    if has("nvv4l2decoder") && has("nvvidconv") {
        DecodePath::Hardware
    } else {
        DecodePath::Software
    }
}

/// The elements after decoding, to packed RGB at the configured size and rate, ending in the
/// appsink (its drop/max-buffers/sync/caps are set on the element after parsing).
fn tail(cfg: &GstConfig, path: DecodePath) -> String {
    let size = if cfg.width > 0 { format!(",width={},height={}", cfg.width, cfg.height) } else { String::new() };
    let rate = if cfg.fps > 0 {
        format!(" ! videorate drop-only=true ! video/x-raw,framerate={}/1", cfg.fps)
    } else {
        String::new()
    };
    match path {
        // nvvidconv scales in hardware but has no packed RGB output: BGRx, then videoconvert.
        DecodePath::Hardware => format!(
            "nvvidconv ! video/x-raw,format=BGRx{size}{rate} ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink"
        ),
        DecodePath::Software => format!(
            "videoconvert ! videoscale{rate} ! video/x-raw,format=RGB{size},pixel-aspect-ratio=1/1 ! appsink name=sink"
        ),
    }
}

/// Quote a value for a launch line.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The launch line for `played` (a user's pipeline is taken as it is). A URI plays through
/// `uridecodebin name=src` (gst.rs sets the RTSP latency on its source when it is made).
pub fn launch_line(cfg: &GstConfig, played: &Played, file_uri: &str, path: DecodePath) -> String {
    match played {
        Played::Pipeline(p) => p.clone(),
        Played::Uri(u) => format!("uridecodebin name=src uri={} ! {}", quoted(u), tail(cfg, path)),
        Played::File(_) => format!("uridecodebin name=src uri={} ! {}", quoted(file_uri), tail(cfg, path)),
        Played::Csi(id) => {
            let (w, h) = if cfg.width > 0 { (cfg.width, cfg.height) } else { (1920, 1080) };
            let fps = if cfg.fps > 0 { cfg.fps } else { 30 };
            // The sensor mode is asked for in NVMM memory; nvvidconv brings it to system memory
            // (CSI cameras give raw Bayer, only libargus debayers it: there is no software path).
            format!(
                "nvarguscamerasrc sensor-id={id} ! video/x-raw(memory:NVMM),width={w},height={h},framerate={fps}/1 \
                 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: &str) -> GstConfig {
        toml::from_str(t).expect("parses")
    }

    fn problems(c: &GstConfig) -> String {
        let mut p = Problems::default();
        c.validate(&mut p, "source.gstreamer");
        p.0.iter().map(|p| format!("{}: {}", p.key, p.msg)).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn exactly_one_of_uri_csi_pipeline() {
        assert_eq!(problems(&cfg("uri = \"rtsp://cam/1\"")), "");
        assert_eq!(problems(&cfg("csi = 0")), "");
        assert_eq!(problems(&cfg("pipeline = \"videotestsrc ! appsink name=sink\"")), "");
        assert!(
            problems(&cfg("")).contains("[source.gstreamer] uri: give exactly one of uri, csi or pipeline (0 given)")
        );
        assert!(problems(&cfg("uri = \"a.mp4\"\ncsi = 1")).contains("(2 given)"));
        let p = problems(&cfg("pipeline = \"videotestsrc ! fakesink\""));
        assert!(p.contains("[source.gstreamer] pipeline: must end in an appsink named `sink`"), "{p}");
        let p = problems(&cfg("uri = \"x\"\nwidth = 640\ntimeout_ms = 5\nbackoff_min_ms = 9\nbackoff_max_ms = 3"));
        for key in ["height", "timeout_ms", "backoff_max_ms"] {
            assert!(p.contains(&format!("[source.gstreamer] {key}")), "{key} in {p}");
        }
    }

    #[test]
    fn what_is_played_and_how() {
        let base = Path::new("/base");
        let file = cfg("uri = \"clips/a.mp4\"").what(base);
        assert_eq!(file, Played::File("/base/clips/a.mp4".into()));
        assert!(file.is_file() && file.sync() && !file.is_network());
        let rtsp = cfg("uri = \"rtsp://127.0.0.1:8554/x\"").what(base);
        assert!(rtsp.is_network() && !rtsp.sync() && !rtsp.is_file());
        assert!(cfg("uri = \"file:///a.mp4\"").what(base).is_file());
        assert_eq!(cfg("csi = 1").what(base).key(), "csi");
        assert_eq!(cfg("csi = 1").what(base).describe(), "csi sensor 1");
    }

    #[test]
    fn hardware_path_only_with_both_jetson_elements() {
        let only = |names: &'static [&'static str]| move |e: &str| names.contains(&e);
        assert_eq!(choose_path(&only(&["nvv4l2decoder", "nvvidconv"])), DecodePath::Hardware);
        assert_eq!(choose_path(&only(&["nvv4l2decoder"])), DecodePath::Software);
        assert_eq!(choose_path(&only(&["nvvidconv"])), DecodePath::Software);
        assert_eq!(choose_path(&only(&[])), DecodePath::Software);
    }

    #[test]
    fn launch_lines() {
        let c = cfg("uri = \"rtsp://127.0.0.1:8554/bikes\"\nwidth = 640\nheight = 360\nfps = 10");
        let played = c.what(Path::new("."));
        assert_eq!(
            launch_line(&c, &played, "", DecodePath::Software),
            "uridecodebin name=src uri=\"rtsp://127.0.0.1:8554/bikes\" ! videoconvert ! videoscale ! videorate \
             drop-only=true ! video/x-raw,framerate=10/1 ! video/x-raw,format=RGB,width=640,height=360,\
             pixel-aspect-ratio=1/1 ! appsink name=sink"
        );
        assert_eq!(
            launch_line(&c, &played, "", DecodePath::Hardware),
            "uridecodebin name=src uri=\"rtsp://127.0.0.1:8554/bikes\" ! nvvidconv ! video/x-raw,format=BGRx,\
             width=640,height=360 ! videorate drop-only=true ! video/x-raw,framerate=10/1 ! videoconvert ! \
             video/x-raw,format=RGB ! appsink name=sink"
        );
        let c = cfg("uri = \"my \\\"clip\\\".mp4\"");
        let line = launch_line(&c, &c.what(Path::new("/v")), "file:///v/my%20%22clip%22.mp4", DecodePath::Software);
        assert!(
            line.starts_with("uridecodebin name=src uri=\"file:///v/my%20%22clip%22.mp4\" ! videoconvert"),
            "{line}"
        );
        let c = cfg("csi = 1\nwidth = 1280\nheight = 720");
        assert_eq!(
            launch_line(&c, &c.what(Path::new(".")), "", DecodePath::Software),
            "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! \
             nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink"
        );
        let c = cfg("pipeline = \"videotestsrc ! videoconvert ! appsink name=sink\"");
        assert_eq!(launch_line(&c, &c.what(Path::new(".")), "", DecodePath::Hardware), c.pipeline);
    }
}
