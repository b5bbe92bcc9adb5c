"""A scratch copy of the checkout for mutation runs: mutants are written there, never into the tree
you work in (a run that is killed leaves the real sources untouched)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "scratch_copy"]


def scratch_copy(prefix: str = "pagecodec-mut-") -> Path:
    """Every file git knows in the checkout (tracked, or new and not ignored), as it is on disk now,
    copied to a new temporary directory. Tests run there with that directory first on ``sys.path``
    (``python -m pytest`` from it), so its ``pagecodec`` wins over an editable install of the original."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    dest = Path(tempfile.mkdtemp(prefix=prefix))
    for name in filter(None, files):
        src = ROOT / name
        if not src.is_file():
            continue  # deleted in the work tree
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)
    return dest
