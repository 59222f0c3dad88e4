#!/usr/bin/python3
"""A small RTSP server for tests and demos: serves MP4 (H.264) files on 127.0.0.1 in a loop.

    /usr/bin/python3 tools/rtsp_server.py --port 8554 bikes=.cache/video/bikes.mp4 [NAME=FILE ...]

serves rtsp://127.0.0.1:8554/bikes. The H.264 is sent as it is in the file (no re-encoding, so
the server costs almost no CPU), paced at the file's rate; the "loop" is the file chained
`--repeat` times with GStreamer's `concat` (timestamps continue across the joins), which is
simpler and steadier than seeking the server's media pipeline at every end. The chained copy
is written once at start-up (into --workdir, reused by later starts; tests restart the server
many times) (concat inside the server's own media
pipeline stalls with more than two inputs on GStreamer 1.22). Every client gets
its own playback from the start (not shared). Prints "ready PORT" once listening, and runs
until killed (tests kill it with SIGKILL to simulate a lost server).

Uses the system Python (python3-gi, gir1.2-gst-rtsp-server-1.0: tools/setup.sh installs them),
not the venv: PyGObject is not pip-installed here.
"""
import argparse
import os
import sys
import tempfile

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def quoted(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def chain(path: str, repeat: int, out: str) -> None:
    """Write `path`'s H.264 `repeat` times one after the other into the MP4 `out`."""
    parts = [f"concat name=c ! h264parse ! mp4mux ! filesink location={quoted(out)}"]
    for _ in range(repeat):
        parts.append(f"filesrc location={quoted(path)} ! qtdemux ! h264parse ! queue ! c.")
    pipe = Gst.parse_launch(" ".join(parts))
    pipe.set_state(Gst.State.PLAYING)
    msg = pipe.get_bus().timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if msg is None or msg.type != Gst.MessageType.EOS:
        err = msg.parse_error()[0].message if msg else "timed out"
        raise RuntimeError(f"{path}: cannot chain it {repeat} times: {err}")


def launch_line(path: str) -> str:
    return (
        f"( filesrc location={quoted(path)} ! qtdemux ! h264parse config-interval=-1 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--repeat", type=int, default=30, help="times each file is played (default 30)")
    ap.add_argument(
        "--workdir", help="where the chained copies are kept and reused (default: a temporary folder)"
    )
    ap.add_argument("mounts", nargs="+", help="NAME=FILE.mp4")
    args = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ailurus-rtsp-")
    workdir = args.workdir or tmp.name
    for m in args.mounts:
        name, sep, path = m.partition("=")
        if not sep or not os.path.isfile(path):
            print(f"rtsp_server: {m!r}: want NAME=FILE with an existing file", file=sys.stderr)
            return 2
        looped = os.path.join(workdir, f"{name}-x{args.repeat}.mp4")
        if not os.path.isfile(looped):
            chain(os.path.abspath(path), args.repeat, looped + ".part")
            os.replace(looped + ".part", looped)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(looped))
        factory.set_shared(False)
        mounts.add_factory("/" + name, factory)
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 2
    print(f"ready {args.port}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
