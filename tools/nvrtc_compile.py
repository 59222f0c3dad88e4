#!/usr/bin/env python3
"""Compile one CUDA C file with NVRTC (ctypes, no toolkit needed): the CI side of kernels/*.cu.

Usage: nvrtc_compile.py LIBNVRTC SRC.cu ARCH OUT
  ARCH compute_XY -> OUT is PTX (then assembled by ptxas in tools/check_kernels.sh);
  ARCH sm_XY      -> OUT is a CUBIN (the path src/reduce/cuda.rs takes at start-up).
Options: the `// nvrtc-options:` line of the source, the same line the Rust loader reads.
Exit status 1 with the NVRTC log on a compile error. Owns nothing else.
"""

import ctypes
import re
import sys


def options_of(src: str) -> list:
    m = re.search(r"^// nvrtc-options:(.*)$", src, re.MULTILINE)
    return m.group(1).split() if m else []


def main() -> int:
    lib_path, src_path, arch, out_path = sys.argv[1:5]
    lib = ctypes.CDLL(lib_path)
    src = open(src_path, encoding="utf-8").read()
    opts = options_of(src) + [f"--gpu-architecture={arch}"]

    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), src_path.encode(), 0, None, None)
    if rc != 0:
        print(f"{src_path}: nvrtcCreateProgram failed ({rc})", file=sys.stderr)
        return 1
    c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), c_opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace").strip()
    if rc != 0:
        print(f"{src_path} ({arch}): NVRTC error {rc}:\n{text}", file=sys.stderr)
        return 1
    if text:
        print(f"{src_path} ({arch}): NVRTC log:\n{text}", file=sys.stderr)

    cubin = arch.startswith("sm_")
    get_size, get = (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX)
    if get_size(prog, ctypes.byref(size)) != 0:
        print(f"{src_path} ({arch}): no {'CUBIN' if cubin else 'PTX'} produced", file=sys.stderr)
        return 1
    buf = ctypes.create_string_buffer(size.value)
    get(prog, buf)
    data = buf.raw if cubin else buf.value
    with open(out_path, "wb") as f:
        f.write(data)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
