//! The http sink's page: the preview page itself (`preview.html`, served with a strict
//! Content-Security-Policy: it loads nothing from anywhere but this server) and the list of
//! streams it shows. Must not serve (that is `http.rs`).

use std::sync::Arc;

use super::STREAM;

/// The page's Content-Security-Policy: scripts, styles, images and fetches from this origin
/// only (the page's own inline script and style included).
pub(super) const PAGE_CSP: &str =
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// The preview page (`{REFRESH_MS}` is replaced at build time).
pub(super) const INDEX_HTML: &str = include_str!("../preview.html");

/// `/streams.json`: the streams that have published (in order of first frame; `default`
/// before any has), each with the prefix of its routes.
pub(super) fn streams_json(names: &[Arc<str>]) -> String {
    let default: [Arc<str>; 1] = [STREAM.into()];
    let names = if names.is_empty() { &default[..] } else { names };
    let list: Vec<serde_json::Value> =
        names.iter().map(|n| serde_json::json!({ "name": &**n, "prefix": format!("/streams/{n}") })).collect();
    format!("{}\n", serde_json::json!({ "streams": list }))
}
