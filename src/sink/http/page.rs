//! The http sink's page: the preview page itself (`preview.html`, served with a strict
//! Content-Security-Policy: it loads nothing from anywhere but this server) and the list of
//! streams it shows. Must not serve (that is `http.rs`).

use super::STREAM;

/// The page's Content-Security-Policy: scripts, styles, images and fetches from this origin
/// only (the page's own inline script and style included).
pub(super) const PAGE_CSP: &str =
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// The preview page (`{REFRESH_MS}` is replaced at build time).
pub(super) const INDEX_HTML: &str = include_str!("../preview.html");

/// `/streams.json`: the streams this sink shows, each with the prefix of its routes.
pub(super) fn streams_json() -> String {
    let name = serde_json::Value::from(STREAM);
    format!("{{\"streams\":[{{\"name\":{name},\"prefix\":\"/s/{STREAM}\"}}]}}\n")
}
