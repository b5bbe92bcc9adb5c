"""Real QEMU (issue #4): find the binary, run small VMs, talk QMP, migrate to and from files.

``find`` locates ``qemu-system-x86_64``; ``guest`` builds a tiny boot-sector guest of our own;
``machine`` starts and always stops VMs; ``qmp`` is the monitor client; ``migrate`` drives a migration
to a file and loads one into a destination.
"""

from __future__ import annotations

from ..errors import PageCodecError

__all__ = ["QemuError"]


class QemuError(PageCodecError):
    """QEMU is missing, failed to start, rejected a command, timed out or exited (its stderr included)."""
