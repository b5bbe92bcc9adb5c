"""Results are written atomically: a temporary file beside the target, renamed into place.

The temporary file is created with mode 0666 and the umask applied, like any file a program opens
(``tempfile.mkstemp`` would make it 0600, and the result would keep that after the rename).

A target that cannot be written — its directory missing (it is not created: a mistyped path must not
grow directories), a directory in its place, no permission, a read-only or full file system — raises
:class:`~pagecodec.errors.OutputError` naming the path, and leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import OutputError

__all__ = ["create_temp", "umask", "atomic_write_bytes", "atomic_write_json", "check_output", "output_error"]


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


def output_error(path: str | os.PathLike[str], e: OSError, what: str = "cannot write") -> OutputError:
    """An OSError met while writing ``path`` as the one-line OutputError that names it."""
    reason = e.strerror or str(e)
    parent = Path(path).parent
    if isinstance(e, FileNotFoundError) and not parent.is_dir():
        reason = f"no such directory {str(parent) or '.'!r}"
    return OutputError(f"{path}: {what}: {reason}")


def check_output(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Refuse early what :func:`create_temp` would refuse later: ``path``'s directory missing or not a
    directory, or (unless ``directory``) a directory at ``path``. Call it before a run, so a
    long run does not end in an error about its output; the write itself still checks everything."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"{p}: cannot write: directory {str(parent)!r} {what}")
    if not directory and p.is_dir():
        raise OutputError(f"{p}: cannot write: is a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: cannot write: no permission to create files in {str(parent)!r}")


def create_temp(path: str | os.PathLike[str]) -> tuple[int, str]:
    """A new, empty temporary file beside ``path`` (the same file system, so ``os.replace`` is
    atomic), open for writing: (fd, its path). Its mode is 0666 less the umask. OutputError if it
    cannot be made (the directory missing, no permission, …)."""
    p = Path(path)
    for _ in range(100):
        tmp = str(p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise output_error(p, e) from None
    raise OutputError(f"{p}: cannot create a temporary file beside it")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, renamed into place). The
    directory must exist: OutputError otherwise, as for anything else that stops the write."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: cannot write: is a directory")
    fd, tmp = create_temp(p)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise output_error(p, e) from None
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())
