"""Results are written atomically: a temporary file beside the target, renamed into place.

The temporary file is created with mode 0666 and the umask applied, like any file a program opens
(``tempfile.mkstemp`` would make it 0600, and the result would keep that after the rename).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["create_temp", "umask", "atomic_write_bytes", "atomic_write_json"]


def umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: the classic swap (not thread-safe, but brief)
    os.umask(old)
    return old


def create_temp(path: str | os.PathLike[str]) -> tuple[int, str]:
    """A new, empty temporary file beside ``path`` (the same file system, so ``os.replace`` is
    atomic), open for writing: (fd, its path). Its mode is 0666 less the umask."""
    p = Path(path)
    for _ in range(100):
        tmp = str(p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {p}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(p)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())
