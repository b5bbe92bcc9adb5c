"""Where a figure came from: the machine, pagecodec's commit, every library's and plugin's version.

A benchmark figure is only comparable with another taken on the same CPU with the same code and
libraries, so every result carries them (``machine``, ``versions``) and ``pagecodec report A B``
prints where two files differ. Facts are read from the process that ran the replay (a Dask worker
may be another machine).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = ["machine", "versions", "git_commit", "LIBRARIES"]

#: Python distributions whose versions change figures (codecs, trace decoding, kernels, plugins' host).
LIBRARIES = ("numpy", "pyarrow", "numba", "zstandard", "lz4", "isal", "zlib-ng", "pluggy", "click")


def machine() -> dict[str, Any]:
    """CPU model, logical CPUs (and how many this process may use), memory, kernel."""
    return dict(_machine())


@lru_cache(maxsize=1)  # facts of the host: read once per process
def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": os.cpu_count(), "usable-cores": usable, "memory-bytes": mem,
            "system": f"{platform.system()} {platform.release()}", "arch": platform.machine()}


@lru_cache(maxsize=1)  # the checkout does not change under a running process
def git_commit() -> str | None:
    """The commit of a source checkout pagecodec runs from (``+dirty`` with local changes); None for
    an installed copy (then ``versions()['pagecodec']`` is what identifies it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _system_zlib() -> str | None:
    name = ctypes.util.find_library("z")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.zlibVersion.restype = ctypes.c_char_p
        return f"{name} {lib.zlibVersion().decode()}"
    except (OSError, AttributeError):
        return None


def _system_zstd() -> str | None:
    from ..codecs.zstd_ctx import zstd_version

    try:
        return zstd_version()
    except Exception:  # no system libzstd: the codecs that need it refuse to run, versions say so
        return None


def versions(plugins: Any | None = None) -> dict[str, Any]:
    """pagecodec (version and git commit), Python, each library in :data:`LIBRARIES`, the system
    zlib and libzstd the codecs load, and each plugin's version (``plugins``: a PluginManager)."""
    out: dict[str, Any] = {"pagecodec": __version__, "git-commit": git_commit(), "python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["libz"] = _system_zlib()
    out["libzstd"] = _system_zstd()
    if plugins is not None:
        out["plugins"] = {info.name: info.version for info in plugins.infos.values()}
    return out
