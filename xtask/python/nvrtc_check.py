#!/usr/bin/env python3
"""Compiles every kernels/*.cu module with NVRTC as backend::cuda::kernels does (common.cuh
prepended, included modules, the same options), without a GPU: a compile check for machines
that have no CUDA driver. Needs only the NVRTC shared library, e.g. from the PyPI wheel
`nvidia-cuda-nvrtc` (13.x): `pip download --no-deps "nvidia-cuda-nvrtc>=13,<14"`, unzip it and
pass `--nvrtc .../nvidia/cu13/lib/libnvrtc.so.13`.

Usage: python3 xtask/python/nvrtc_check.py --nvrtc PATH [--arch sm_90] [-v] [MODULE.cu ...]
(-v: ptxas's report per kernel: registers, shared memory, stack frame, spills.)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def rust_table() -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Module files, their includes and the NVRTC options, read from src/backend/cuda/kernels.rs."""
    src = open(os.path.join(ROOT, "src/backend/cuda/kernels.rs"), encoding="utf-8").read()
    files = dict(re.findall(r'KernelModule::(\w+) => "(\w+\.cu)"', src))
    opts = re.findall(r'"(--[^"]+)"', re.search(r"NVRTC_OPTIONS: &\[&str\] = &\[(.*?)\];", src).group(1))
    includes = {}
    for name, inc in re.findall(r"KernelModule::(\w+) => &\[(KernelModule::[^\]]*)\]", src):
        includes[files[name]] = [files[i] for i in re.findall(r"KernelModule::(\w+)", inc)]
    return list(files.values()), includes, opts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvrtc", required=True)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("-v", action="store_true", help="print ptxas's resource report per kernel")
    ap.add_argument("modules", nargs="*")
    a = ap.parse_args()
    nv = ctypes.CDLL(a.nvrtc)
    files, includes, opts = rust_table()
    common = open(os.path.join(ROOT, "kernels/common.cuh"), encoding="utf-8").read()
    failed = 0
    for f in a.modules or files:
        text = common
        for m in includes.get(f, []) + [f]:
            text += f'\n#line 1 "{m}"\n' + open(os.path.join(ROOT, "kernels", m), encoding="utf-8").read()
        prog = ctypes.c_void_p()
        assert nv.nvrtcCreateProgram(ctypes.byref(prog), text.encode(), f.encode(), 0, None, None) == 0
        o = opts + [f"--gpu-architecture={a.arch}"] + (["--ptxas-options=-v"] if a.v else [])
        arr = (ctypes.c_char_p * len(o))(*[s.encode() for s in o])
        rc = nv.nvrtcCompileProgram(prog, len(o), arr)
        size = ctypes.c_size_t()
        nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetProgramLog(prog, log)
        msg = log.value.decode(errors="replace").strip()
        print(f"{f}: {'ok' if rc == 0 else 'FAILED'}" + (f"\n{msg}" if msg else ""))
        failed += rc != 0
        nv.nvrtcDestroyProgram(ctypes.byref(prog))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
