use super::*;

#[test]
fn routes_ignore_the_query() {
    let r = |u| Route::parse(u).0;
    assert_eq!(r("/"), Route::Index);
    assert_eq!(r("/overlay.jpg?seq=12"), Route::Overlay);
    assert_eq!(r("/mask.png"), Route::Mask);
    assert_eq!(r("/metrics"), Route::Metrics);
    assert_eq!(r("/healthz?x"), Route::Healthz);
    assert_eq!(r("other"), Route::Other);
    assert_eq!(r("/nope"), Route::Other);
}

#[test]
fn stream_prefixes_name_the_stream_for_per_stream_routes_only() {
    assert_eq!(Route::parse("/s/cam1/clusters.png?seq=3"), (Route::Clusters, Some("cam1")));
    assert_eq!(Route::parse("/s/default/"), (Route::Index, Some("default")));
    assert_eq!(Route::parse("/s/default"), (Route::Index, Some("default")));
    assert_eq!(Route::parse("/s/default/history.json"), (Route::History, Some("default")));
    assert_eq!(Route::parse("/s/default/metrics"), (Route::Other, Some("default")));
    assert_eq!(Route::parse("/streams.json"), (Route::Streams, None));
    assert_eq!(Route::parse("/streams/cam1/latest.json?after=3"), (Route::Latest, Some("cam1")));
    assert_eq!(Route::parse("/streams/cam1/metrics"), (Route::Other, Some("cam1")));
}

#[test]
fn config_problems_name_the_key() {
    let cfg =
        HttpConfig { address: "localhost".into(), port: 80000, threads: 0, jpeg_quality: 0, ..Default::default() };
    let mut p = Problems::default();
    cfg.validate(&mut p);
    let keys: Vec<_> = p.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["[sink.http] address", "[sink.http] port", "[sink.http] threads", "[sink.http] jpeg_quality"]);
    assert_eq!(p.0[1].msg, "80000 is not a port");
}
