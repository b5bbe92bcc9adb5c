"""Start and stop small QEMU VMs; the process is always killed on exit.

    with VM(workdir, disk=img, name="src") as src:          # boots the guest
        src.qmp.execute("query-status")
    with VM(workdir, disk=img, name="dst", incoming=True) as dst:   # -incoming defer, paused (-S)
        ...

Command line (QEMU 7.2): ``-machine pc-i440fx-7.2 -accel tcg -m 64 -display none -nodefaults
-drive file=…,format=raw,if=ide -qmp unix:…,server=on,wait=off`` plus ``-incoming defer -S`` for a
destination (paused: after the load it must not run, so its RAM stays what the stream carried).
QEMU's stderr goes to ``<workdir>/<name>.stderr`` and is quoted in every error.

``ram_file``: back ``pc.ram`` with a file (``memory-backend-file`` with id ``pc.ram``, ``share=on``):
the RAM block keeps its name and size, so migration streams are unchanged, and the whole block can be
read from the file — including 0xa0000…0xfffff, which ``pmemsave`` (guest-physical addresses) shows
only through the chipset's PAM/VGA windows.

Other RAM blocks of pc-i440fx-7.2 (``info ramblock``: pc.ram, /rom@etc/acpi/tables, pc.bios, pc.rom,
/rom@etc/table-loader, /rom@etc/acpi/rsdp): ``pc.bios`` is always mapped read-only just below 4 GiB
(``pmemsave(0xfffc0000, 0x40000)``); ``pc.rom`` shows at 0xc0000… only while the chipset's PAM
registers route that window to it (not after SeaBIOS has shadowed it into RAM, and not on a
destination that loaded no device state); the ``/rom@etc/…`` blocks are fw_cfg blobs with no
guest-physical address, so pmemsave cannot reach them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Sequence

from . import QemuError
from .find import require_qemu
from .qmp import QMP

__all__ = ["VM", "RAMBlock", "DEFAULT_MACHINE", "DEFAULT_MEMORY_MIB", "parse_ramblocks"]

DEFAULT_MACHINE = "pc-i440fx-7.2"
DEFAULT_MEMORY_MIB = 64
_SUN_PATH_MAX = 107


@dataclass(frozen=True)
class RAMBlock:
    """One line of HMP ``info ramblock``."""

    name: str
    page_size: int
    offset: int
    used: int
    total: int


def parse_ramblocks(text: str) -> list[RAMBlock]:
    """Parse HMP ``info ramblock`` output (QEMU 7.2)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+(\d+)\s*([KMG]?)i?B?\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)", line)
        if m:
            psz = int(m[2]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m[3]]
            out.append(RAMBlock(m[1], psz, int(m[4], 16), int(m[5], 16), int(m[6], 16)))
    return out


class VM:
    """One QEMU process with a QMP socket. Use as a context manager (or call :meth:`stop`)."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        disk: str | os.PathLike[str] | None = None,
        name: str = "vm",
        memory_mib: int = DEFAULT_MEMORY_MIB,
        machine: str = DEFAULT_MACHINE,
        incoming: bool = False,
        paused: bool | None = None,
        ram_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        qemu: str | None = None,
        qmp_timeout: float = 30.0,
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.disk = Path(disk) if disk is not None else None
        self.memory_mib = memory_mib
        self.machine = machine
        self.incoming = incoming
        self.paused = incoming if paused is None else paused
        self.ram_file = Path(ram_file) if ram_file is not None else None
        self.extra_args = tuple(extra_args)
        self.qemu = qemu or require_qemu().path
        self.qmp_timeout = qmp_timeout
        self.start_timeout = start_timeout
        self.qmp_path = self.workdir / f"{name}.qmp"
        self.stderr_path = self.workdir / f"{name}.stderr"
        if len(str(self.qmp_path)) > _SUN_PATH_MAX:
            raise QemuError(f"QMP socket path too long for a UNIX socket ({len(str(self.qmp_path))} > "
                            f"{_SUN_PATH_MAX}): {self.qmp_path}; use a shorter working directory")
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: QMP | None = None
        self._stderr: IO[bytes] | None = None

    # --- command line --------------------------------------------------------------------------
    @property
    def args(self) -> list[str]:
        machine = self.machine
        a = [self.qemu]
        if self.ram_file is not None:
            a += ["-object", f"memory-backend-file,id=pc.ram,size={self.memory_mib}M,mem-path={self.ram_file},share=on"]
            machine += ",memory-backend=pc.ram"
        a += ["-machine", machine, "-accel", "tcg", "-m", str(self.memory_mib), "-display", "none", "-nodefaults"]
        if self.disk is not None:
            # locking off: a destination opens the same image while the (paused) source still has it
            a += ["-drive", f"file={self.disk},format=raw,if=ide,file.locking=off"]
        a += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if self.paused:
            a.append("-S")
        if self.incoming:
            a += ["-incoming", "defer"]
        return a + list(self.extra_args)

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> VM:
        if self.proc is not None:
            raise QemuError(f"VM {self.name}: already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for p in (self.qmp_path,):
            p.unlink(missing_ok=True)
        self._stderr = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                         stderr=self._stderr, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as e:
            self._stderr.close()
            raise QemuError(f"VM {self.name}: cannot run {self.qemu}: {e}") from None
        try:
            self._qmp = QMP(self.qmp_path, timeout=self.qmp_timeout, connect_timeout=self.start_timeout,
                            alive=self.exit_reason)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def qmp(self) -> QMP:
        if self._qmp is None:
            raise QemuError(f"VM {self.name}: not started")
        return self._qmp

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stderr_text(self, limit: int = 4000) -> str:
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace").strip()

    def exit_reason(self) -> str | None:
        """None while QEMU runs; else "QEMU (name) exited with status N: <stderr>"."""
        if self.proc is None:
            return f"QEMU ({self.name}) not started"
        rc = self.proc.poll()
        if rc is None:
            return None
        err = self.stderr_text()
        return f"QEMU ({self.name}) exited with status {rc}" + (f": {err}" if err else " (no stderr output)")

    def check_alive(self) -> None:
        reason = self.exit_reason()
        if reason:
            raise QemuError(reason)

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit on its own; returns the status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise QemuError(f"QEMU ({self.name}) still running after {timeout:g} s") from None

    def stop(self, timeout: float = 5.0) -> None:
        """``quit`` over QMP, then SIGTERM, then SIGKILL; always reaps the process."""
        proc = self.proc
        if self._qmp is not None:
            if proc is not None and proc.poll() is None:
                try:
                    self._qmp.execute("quit", timeout=timeout)
                except QemuError:
                    pass
            self._qmp.close()
            self._qmp = None
        if proc is not None:
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                if sig is not None:
                    try:
                        proc.send_signal(sig)
                    except ProcessLookupError:
                        break
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is None:  # pragma: no cover - SIGKILL did not take within the timeout
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self.qmp_path.unlink(missing_ok=True)

    def __enter__(self) -> VM:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- guest state ---------------------------------------------------------------------------
    def status(self) -> str:
        return str(self.qmp.execute("query-status")["status"])

    def ram_blocks(self) -> list[RAMBlock]:
        return parse_ramblocks(self.qmp.hmp("info ramblock"))

    def pmemsave(self, addr: int, size: int, *, timeout: float | None = None) -> bytes:
        """``size`` bytes of guest-physical memory from ``addr`` (QMP ``pmemsave`` into a file)."""
        path = self.workdir / f"{self.name}.pmem"
        path.unlink(missing_ok=True)
        try:
            self.qmp.execute("pmemsave", val=addr, size=size, filename=str(path), timeout=timeout)
            data = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        if len(data) != size:
            raise QemuError(f"VM {self.name}: pmemsave {addr:#x}+{size:#x} gave {len(data)} bytes")
        return data

    def pc_ram(self) -> bytes:
        """The whole ``pc.ram`` block. With ``ram_file``: the backing file. Otherwise through ``pmemsave``
        by guest-physical address (pc.ram below 4 GiB): exact except 0xa0000…0xfffff, where the
        chipset maps VGA/ROM/shadow-RAM windows rather than pc.ram."""
        size = self.memory_mib << 20
        if self.ram_file is not None:
            with open(self.ram_file, "rb") as f:
                data = f.read(size)
            if len(data) != size:
                raise QemuError(f"VM {self.name}: {self.ram_file} holds {len(data)} bytes, expected {size}")
            return data
        if size > 0xE0000000:
            raise QemuError("pc_ram via pmemsave supports pc.ram below the PCI hole only")
        return self.pmemsave(0, size)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL the VM if the process that started it dies without stopping it (e.g. a test run
    killed by a timeout), so no guest is left spinning. Elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``cond()`` until it returns a truthy value (returned); QemuError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise QemuError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
