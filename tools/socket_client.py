#!/usr/bin/env python3
"""Read the masks that ailurus streams on its UNIX socket ([sink.socket]), with numpy.

Enable the sink in the config:

    [sink.socket]
    enabled = true
    path = "/run/ailurus/masks.sock"

Wire format: one message per mask, all integers little-endian. A 48-byte header:

    offset  type     field
         0  4 bytes  magic b"AILM"
         4  u16      version (1)
         6  u16      header length in bytes (48; skip anything past the fields you know)
         8  u64      frame sequence number (gaps: frames this client skipped or never got)
        16  u64      capture time, microseconds since the UNIX epoch
        24  u32      width
        28  u32      height
        32  u32      class count (2 for saliency: 0 = background, 1 = salient)
        36  u32      M, the tokens the reduced ViT blocks ran on
        40  u32      capture-to-mask latency, microseconds
        44  u32      payload length in bytes (= width * height)

then `payload length` bytes: one class id (uint8) per pixel, row-major (height x width).

A client that reads too slowly skips frames (the server never waits for it) and is
disconnected if its socket stays full for [sink.socket] write_timeout_ms.

Command line:

    tools/socket_client.py [--socket PATH] [--count N] [--save DIR] [--quiet]

prints one line per mask and, with --save, writes DIR/<seq, 8 digits>.npy (uint8, H x W).

As a library:

    from socket_client import MaskStream
    with MaskStream("/run/ailurus/masks.sock") as stream:
        for header, mask in stream:          # header: numpy record, mask: uint8 [H, W]
            print(header["seq"], (mask == 1).mean())
"""

import argparse
import os
import socket
import sys

import numpy as np

MAGIC = b"AILM"
VERSION = 1
HEADER = np.dtype(
    [
        ("magic", "S4"),
        ("version", "<u2"),
        ("header_len", "<u2"),
        ("seq", "<u8"),
        ("captured_us", "<u8"),
        ("width", "<u4"),
        ("height", "<u4"),
        ("num_classes", "<u4"),
        ("m", "<u4"),
        ("latency_us", "<u4"),
        ("payload_len", "<u4"),
    ]
)
assert HEADER.itemsize == 48


class ProtocolError(Exception):
    pass


class MaskStream:
    """Iterate over (header, mask) from the ailurus socket sink until the server closes."""

    def __init__(self, path, timeout=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def _read_exact(self, n, at_boundary=False):
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                if at_boundary and got == 0:
                    return None
                raise ProtocolError(f"stream ended inside a message ({got} of {n} bytes)")
            got += k
        return buf

    def read(self):
        """The next (header, mask), or None when the server closed the stream."""
        raw = self._read_exact(HEADER.itemsize, at_boundary=True)
        if raw is None:
            return None
        header = np.frombuffer(raw, dtype=HEADER)[0]
        if header["magic"] != MAGIC:
            raise ProtocolError(f"bad magic {bytes(header['magic'])!r}, expected {MAGIC!r}")
        if header["version"] != VERSION:
            raise ProtocolError(f"unsupported version {header['version']} (this client reads {VERSION})")
        extra = int(header["header_len"]) - HEADER.itemsize
        if extra < 0:
            raise ProtocolError(f"header length {header['header_len']} < {HEADER.itemsize}")
        if extra:
            # A named stream ([streams.NAME]) puts its name here: 32 bytes, NUL-padded.
            self.stream = self._read_exact(extra)[:32].rstrip(b"\0").decode("utf-8", "replace")
        else:
            self.stream = ""
        h, w, n = int(header["height"]), int(header["width"]), int(header["payload_len"])
        if n != h * w:
            raise ProtocolError(f"payload {n} bytes for a {w}x{h} mask")
        mask = np.frombuffer(self._read_exact(n), dtype=np.uint8).reshape(h, w)
        return header, mask

    def __iter__(self):
        while True:
            item = self.read()
            if item is None:
                return
            yield item


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default="/run/ailurus/masks.sock", help="socket path")
    ap.add_argument("--count", type=int, default=0, help="stop after this many masks (0 = until closed)")
    ap.add_argument("--save", metavar="DIR", help="write DIR/<seq>.npy for each mask")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for data")
    ap.add_argument("--quiet", action="store_true", help="no line per mask")
    args = ap.parse_args()
    if args.save:
        os.makedirs(args.save, exist_ok=True)
    n = 0
    with MaskStream(args.socket, args.timeout) as stream:
        for header, mask in stream:
            n += 1
            if args.save:
                np.save(os.path.join(args.save, f"{int(header['seq']):08d}.npy"), mask)
            if not args.quiet:
                named = f"[{stream.stream}] " if stream.stream else ""  # [streams.NAME]
                print(
                    f"{named}seq {int(header['seq'])}: {mask.shape[1]}x{mask.shape[0]}, "
                    f"{int(header['num_classes'])} classes, M={int(header['m'])}, "
                    f"latency {int(header['latency_us']) / 1e3:.1f} ms, "
                    f"non-background {(mask != 0).mean() * 100:.1f}%",
                    flush=True,
                )
            if args.count and n >= args.count:
                break
    print(f"read {n} mask(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
