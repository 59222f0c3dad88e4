//! Two named streams (`[streams.NAME]`) in one process: each publishes on its own topics
//! `<prefix>/NAME/meta` and `/mask`, and the `online` status lists both.

use super::*;

#[test]
fn two_streams_publish_on_their_own_topics_and_online_lists_both() {
    let _g = serial();
    let Some((mosq, _)) = broker_bins("two_streams_publish_on_their_own_topics_and_online_lists_both") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Broker::start(&mosq, dir.path(), port, "allow_anonymous true");
    let sub = subscribe(port, "ailurus/dev1/#", None);
    // Two synthetic cameras of different sizes: a mask on the wrong topic shows in its size.
    let cfg = format!(
        "[model]\ninput_size = 224\n[reduce]\nm = 128\n\
         [streams.front]\nkind = \"synthetic\"\n[streams.front.synthetic]\nwidth = 320\nheight = 240\n\
         [streams.back]\nkind = \"synthetic\"\ntarget_ms = 300.0\n[streams.back.synthetic]\nwidth = 160\nheight = 96\n\
         [sink.files]\nenabled = false\n\
         [budget]\nsizes = [224]\nm_min = 64\nm_max = 256\ncalibration = \"configs/calibration-default.csv\"\n\
         [sink.mqtt]\nenabled = true\nport = {port}\nclient_id = \"dev1\"\ntopic_prefix = \"ailurus/dev1\"\n\
         qos = 1\nevery_n = 1\nmasks = \"png\"\n"
    );
    let path = dir.path().join("ailurus.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut run = Ailurus::start(&path, Some(12));
    assert!(run.wait(Duration::from_secs(120)).success(), "{}", run.log_text());
    std::thread::sleep(Duration::from_millis(500));
    let msgs = sub.drain();
    let online = msgs.iter().find(|m| m.topic == "ailurus/dev1/status").expect("online status").json();
    assert_eq!(online["state"], "online");
    assert_eq!(online["streams"], serde_json::json!(["back", "front"]), "every stream, in name order");
    let about: Vec<_> = online["about"]["streams"].as_array().unwrap().iter().map(|s| s["target_ms"].clone()).collect();
    assert_eq!(about, [serde_json::json!(300.0), serde_json::json!(500.0)], "each stream's target");
    let mut total = 0;
    for (name, w, h) in [("front", 320, 240), ("back", 160, 96)] {
        let metas: Vec<_> =
            msgs.iter().filter(|m| m.topic == format!("ailurus/dev1/{name}/meta")).map(|m| m.json()).collect();
        let masks: Vec<_> = msgs.iter().filter(|m| m.topic == format!("ailurus/dev1/{name}/mask")).collect();
        assert!(metas.len() >= 3, "{name}: {} meta message(s)\n{}", metas.len(), run.log_text());
        validate_schema(dir.path(), &metas);
        for m in &metas {
            assert_eq!(m["stream"], name);
            assert_eq!((m["width"].as_u64(), m["height"].as_u64()), (Some(w), Some(h)), "{name}: {m}");
            assert_eq!(m["mask"], "png");
        }
        assert_eq!(masks.len(), metas.len(), "{name}: one mask per meta (every_n = 1)");
        for m in &masks {
            let img = image::load_from_memory(&m.payload).expect("a PNG mask");
            assert_eq!((img.width(), img.height()), (w as u32, h as u32), "{name}: the stream's own mask");
        }
        total += metas.len();
    }
    assert_eq!(total, 12, "every frame published once, on its stream's topic");
    assert!(!msgs.iter().any(|m| m.topic.contains("/main/")), "no `main` topics with named streams");
}
