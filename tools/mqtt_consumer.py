#!/usr/bin/env python3
"""Watch a fleet of ailurus devices on one MQTT broker: one line per frame per device.

Subscribes to <fleet>/+/+/meta (every device's per-frame JSON, schema in
docs/mqtt-meta.schema.json), <fleet>/+/status (retained online/offline) and <fleet>/+/set/result.
With --set, first sends a JSON request of live knobs to one device's <fleet>/<device>/set.

    .cache/venv/bin/python tools/mqtt_consumer.py --host 127.0.0.1 --prefix ailurus
    .cache/venv/bin/python tools/mqtt_consumer.py --set cam1 '{"budget": {"target_ms": 400}}'

Output (the device is the topic level after the prefix):

    cam1/main seq=41 320x240 in=224 M=128 lat=412ms  c1 5.6% [(112,80,60,58) (10,4,9,12)]
    cam2 status online (ailurus 0.1.0, vit_s_focus, strategy ailurus)

Needs paho-mqtt (tools/requirements.txt; tools/setup_python.sh installs it into .cache/venv).
"""
import argparse
import json
import sys
import time

import paho.mqtt.client as mqtt


def meta_line(device, stream, m):
    parts = [f"{device}/{stream} seq={m['seq']} {m['width']}x{m['height']} in={m['input_size']} M={m['m']} "
             f"lat={m['latency_ms']:.0f}ms"]
    for c in m["classes"]:
        if c["id"] == 0 and m["num_classes"] == 2:
            continue  # saliency background
        boxes = " ".join(f"({r['x']},{r['y']},{r['w']},{r['h']})" for r in c["regions"])
        parts.append(f" c{c['id']} {100 * c['fraction']:.1f}% [{boxes}]")
    if m.get("mask"):
        parts.append(f" +mask {m['mask']}")
    return "".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--prefix", default="ailurus", help="fleet prefix: devices publish under PREFIX/<device>/")
    ap.add_argument("--credentials", help="file with the user name on line 1 and the password on line 2")
    ap.add_argument("--set", nargs=2, metavar=("DEVICE", "JSON"), help="send a set request to one device first")
    ap.add_argument("--count", type=int, default=0, help="exit after this many meta messages (0 = never)")
    ap.add_argument("--timeout", type=float, default=0, help="exit (status 1) after this many seconds (0 = never)")
    a = ap.parse_args()

    seen = {"meta": 0}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ailurus-consumer-{time.time_ns() % 10**9}")
    if a.credentials:
        user, password = open(a.credentials).read().splitlines()[:2]
        client.username_pw_set(user, password)

    def on_connect(c, _userdata, _flags, reason, _props):
        if reason.is_failure:
            print(f"broker {a.host}:{a.port}: {reason}", file=sys.stderr)
            return
        for t in (f"{a.prefix}/+/+/meta", f"{a.prefix}/+/status", f"{a.prefix}/+/set/result"):
            c.subscribe(t, qos=1)
        if a.set:
            c.publish(f"{a.prefix}/{a.set[0]}/set", a.set[1], qos=1)

    def on_message(c, _userdata, msg):
        levels = msg.topic[len(a.prefix) + 1:].split("/")
        device = levels[0]
        try:
            body = json.loads(msg.payload)
        except ValueError:
            print(f"{msg.topic}: not JSON ({len(msg.payload)} bytes)")
            return
        if levels[1:] == ["status"]:
            about = body.get("about") or {}
            extra = f" (ailurus {body.get('version')}, {about.get('model', '?')}, strategy " \
                    f"{(about.get('reduce') or {}).get('strategy', '?')})" if body.get("state") == "online" else \
                    f" ({body.get('reason', '')})"
            print(f"{device} status {body.get('state')}{extra}{' [retained]' if msg.retain else ''}")
        elif levels[1:] == ["set", "result"]:
            print(f"{device} set {body.get('id')}: " + ("applied " + ",".join(body.get("changed", []))
                                                      if body.get("applied") else
                                                      "rejected: " + "; ".join(f"{p['key']}: {p['msg']}"
                                                                               for p in body.get("problems", []))))
        elif len(levels) == 3 and levels[2] == "meta":
            print(meta_line(device, levels[1], body))
            seen["meta"] += 1
            if a.count and seen["meta"] >= a.count:
                c.disconnect()
        sys.stdout.flush()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(a.host, a.port, keepalive=30)
    deadline = time.monotonic() + a.timeout if a.timeout else None
    while True:
        rc = client.loop(timeout=0.2)
        if a.count and seen["meta"] >= a.count:
            return 0
        if deadline and time.monotonic() > deadline:
            print(f"timeout after {a.timeout}s with {seen['meta']} meta messages", file=sys.stderr)
            return 1
        if rc != mqtt.MQTT_ERR_SUCCESS:  # broker away: retry every second
            time.sleep(1)
            try:
                client.reconnect()
            except OSError:
                pass

if __name__ == "__main__":
    sys.exit(main())
