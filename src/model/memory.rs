//! The process allocator's settings for a long-running model server (issue #18, memory).
//!
//! glibc's malloc (the allocator of every Linux build) measured as the largest part of
//! `ailurus run`'s peak memory: with the default config, 486 MB peak RSS while the live data
//! (one copy of the weights, one frame's activations per lane) is under 230 MB. Two of its
//! defaults cause it: one arena per thread (every lane, pre/post and pool thread keeps its own
//! freed activations), and the dynamic mmap threshold (after the first large `free` it serves
//! blocks of up to 32 MB from the heap, where the model load's transient buffers then stay).
//! [`tune`] caps the arenas and [`trim`] hands the load's freed memory back after the plans are
//! built. Measured with `/usr/bin/time -v ailurus run --frames 30`, see the README.
//!
//! Own code rather than a crate: two `libc` calls; a different global allocator (mimalloc,
//! jemalloc) would change every allocation of the process, for the same gain.

/// Cap glibc's malloc arenas and fix its mmap threshold (once per process, before the threads
/// start allocating). glibc's own environment variables (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`) win where set.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let unset = |k: &str| std::env::var_os(k).is_none();
            // SAFETY: mallopt only changes allocator parameters; both take any positive value.
            unsafe {
                if unset("MALLOC_ARENA_MAX") {
                    libc::mallopt(libc::M_ARENA_MAX, ARENAS);
                }
                if unset("MALLOC_MMAP_THRESHOLD_") {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                }
            }
        });
    }
}

/// Blocks of this many bytes and more are mapped on their own and unmapped when freed (the
/// fixed value also turns off glibc's dynamic threshold). Measured on the default config, 30
/// frames (AMD EPYC Zen 4, 2 cores): 2 MB 252 MB peak RSS, 4 MB 267 MB, 8 MB 291 MB, glibc's
/// default 460 MB; the price is page faults on the activations each frame (system time +50,
/// +33, +5 ms per frame against the default's). 4 MB: the attention's and the MLP's large
/// tensors (6 MB at 448 px) are mapped, the many small ones reuse the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Arenas glibc may create: one for the whole process. Allocations on the hot path are a few
/// per op (the tensors), so the lock is not contended.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: i32 = 1;

/// Give the heap's free pages back to the system (after the model is loaded: the ONNX bytes and
/// the parsed protobuf are gone by then).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the running pipeline hands the heap's free pages back ([`spawn_trimmer`]).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Trim the heap every [`TRIM_EVERY`] on a thread of its own until `stop` is set.
///
/// Why: with one arena the heap's free chunks stay resident after the frames that touched them
/// (photos and frames of different sizes leave differently sized holes), and `ailurus run`'s RSS
/// crept from 200 to 275 MB over 30 frames at 448 px while malloc's in-use bytes stayed at
/// 140-150 MB (Intel Xeon, avx512f; `mallinfo2`). A trim a second held the steady RSS at
/// 235-245 MB. It takes 0.5-1.5 ms there (the arena's lock is held meanwhile, so a lane's
/// allocation may wait that long, once a second) and the trimmed pages fault in again when
/// reused. Off where `MALLOC_TRIM_THRESHOLD_` is set (the user tunes glibc by hand).
pub fn spawn_trimmer(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::Ordering;
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some() {
            return;
        }
        let step = std::time::Duration::from_millis(100);
        let spawned = std::thread::Builder::new().name("ailurus-trim".into()).spawn(move || {
            let mut since = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                if since.elapsed() >= TRIM_EVERY {
                    trim();
                    since = std::time::Instant::now();
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("memory: no trim thread ({e}); the heap's free pages stay resident");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    drop(stop);
}

/// This process's peak resident set size in bytes (`VmHWM` of /proc/self/status), if known.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
