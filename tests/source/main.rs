//! Frame sources: decoding, recorded streams, reconnecting cameras, `record`, fuzzing, and the
//! GStreamer source end to end against a real RTSP server (gst.rs).
//!
//! The fd-leak test counts this process's open files, so it runs in its own binary
//! (tests/source_fd.rs), sharing `common` with these.

mod common;
mod decode;
mod fuzz;
mod gst;
mod reconnect;
mod record;
mod stream;
