//! The MQTT topics of one device and its streams.

/// The topics of one device (`prefix` resolved) and its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Topics {
    pub stream: String,
    pub meta: String,
    pub mask: String,
    pub status: String,
    pub set: String,
    pub set_result: String,
}

impl Topics {
    pub fn new(prefix: &str, stream: &str) -> Topics {
        Topics {
            stream: stream.into(),
            meta: format!("{prefix}/{stream}/meta"),
            mask: format!("{prefix}/{stream}/mask"),
            status: format!("{prefix}/status"),
            set: format!("{prefix}/set"),
            set_result: format!("{prefix}/set/result"),
        }
    }

    /// Where the topics of a frame's stream are: None for the one `[source]` (empty name: the
    /// device's `main` topics), else the index in `named`, made once per stream name.
    pub fn named_index(named: &mut Vec<Topics>, prefix: &str, stream: &str) -> Option<usize> {
        if stream.is_empty() {
            return None;
        }
        Some(named.iter().position(|t| t.stream == stream).unwrap_or_else(|| {
            named.push(Topics::new(prefix, stream));
            named.len() - 1
        }))
    }
}
