"""Locate ``qemu-system-x86_64`` and binutils, and tell tests whether they may skip.

Tests that need QEMU may skip only outside CI (``CI`` unset or false), and say why; under ``CI=true``
a missing QEMU is a failure (``.ci/run`` installs Debian's ``qemu-system-x86`` and ``binutils``).
``$PAGECODEC_QEMU`` names a binary explicitly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from . import QemuError

__all__ = ["QEMU_ENV", "QemuInfo", "find_qemu", "qemu_info", "require_qemu", "in_ci", "missing_tools",
           "require_for_tests"]

QEMU_ENV = "PAGECODEC_QEMU"
QEMU_NAME = "qemu-system-x86_64"
_FALLBACK_DIRS = ("/usr/bin", "/usr/local/bin")


@dataclass(frozen=True)
class QemuInfo:
    path: str
    version: tuple[int, int, int]
    banner: str  # first line of --version, e.g. "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))


def find_qemu() -> str | None:
    """$PAGECODEC_QEMU, else ``qemu-system-x86_64`` on PATH, else in /usr/bin or /usr/local/bin."""
    env = os.environ.get(QEMU_ENV)
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which(QEMU_NAME)
    if found:
        return found
    for d in _FALLBACK_DIRS:
        p = os.path.join(d, QEMU_NAME)
        if os.access(p, os.X_OK):
            return p
    return None


@lru_cache(maxsize=8)
def qemu_info(path: str) -> QemuInfo:
    """Run ``PATH --version`` and parse it."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuError(f"{path} --version: {e}") from None
    banner = (proc.stdout.strip().splitlines() or [""])[0]
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", banner)
    if proc.returncode != 0 or not m:
        raise QemuError(f"{path} --version: exit {proc.returncode}, unexpected output {proc.stdout[:200]!r}"
                        f" {proc.stderr[:200]!r}")
    return QemuInfo(path, (int(m[1]), int(m[2]), int(m[3] or 0)), banner)


def require_qemu() -> QemuInfo:
    """The QEMU to use, or :class:`QemuError` saying how to get one."""
    path = find_qemu()
    if path is None:
        where = f"${QEMU_ENV}={os.environ[QEMU_ENV]!r} is not executable" if os.environ.get(QEMU_ENV) else \
            f"{QEMU_NAME} not found on PATH or in {', '.join(_FALLBACK_DIRS)}"
        raise QemuError(f"{where} (Debian: apt-get install qemu-system-x86)")
    return qemu_info(path)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_tools(binutils: bool = True) -> str | None:
    """Why the real-QEMU tests cannot run here (None if they can): QEMU, and binutils for the guest."""
    if find_qemu() is None:
        return f"{QEMU_NAME} not found (apt-get install qemu-system-x86)"
    if binutils:
        gone = [t for t in ("as", "ld") if shutil.which(t) is None]
        if gone:
            return f"binutils' {', '.join(gone)} not found (apt-get install binutils)"
    return None


def require_for_tests(binutils: bool = True) -> QemuInfo:
    """For tests: the QEMU to use. If something is missing: ``pytest.skip`` with the reason outside CI,
    ``pytest.fail`` under CI (CI installs QEMU, so missing it there is a bug)."""
    import pytest

    reason = missing_tools(binutils)
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI={os.environ.get('CI')!r} but {reason}: .ci/run must install it")
        pytest.skip(reason)
    return require_qemu()
