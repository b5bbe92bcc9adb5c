"""The target process, addressed through its ``/proc/PID`` directory and a pidfd: reading its
memory, maps, pagemap, clearing soft-dirty bits, and stopping/continuing it."""

from __future__ import annotations

import errno
import os
import signal
import time

import numpy as np

from pagecodec.sources.process.errors import CaptureError, _Gone
from pagecodec.sources.process.maps import PAGE_SIZE, Mapping, parse_maps


def _permission_error(pid: int, what: str, e: OSError) -> CaptureError:
    return CaptureError(
        f"permission denied: {what} of process {pid} ({e.strerror}); attaching needs ptrace access: run as the "
        f"process's user with kernel.yama.ptrace_scope=0, or as root / with CAP_SYS_PTRACE"
    )


class _Proc:
    """The target, addressed by a /proc/PID directory fd (and a pidfd for signals)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.dirfd = -1
        self.memfd = -1
        self.pagemapfd = -1
        self.pidfd = -1
        try:
            self.dirfd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise CaptureError(f"no process with pid {pid}") from None
        except PermissionError as e:
            raise _permission_error(pid, f"/proc/{pid}", e) from None
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.close()
                raise CaptureError(f"no process with pid {pid}") from None
            except OSError:
                self.pidfd = -1
        if self.state() in ("Z", "X"):
            self.close()
            raise CaptureError(f"process {pid} has exited (zombie)")
        try:
            self.memfd = self._open("mem")
        except PermissionError as e:
            self.close()
            raise _permission_error(pid, f"opening /proc/{pid}/mem", e) from None
        except _Gone:
            self.close()
            raise CaptureError(f"process {pid} has exited") from None

    # -- files -------------------------------------------------------------------------------------
    def _open(self, name: str, flags: int = os.O_RDONLY) -> int:
        try:
            return os.open(name, flags | os.O_CLOEXEC, dir_fd=self.dirfd)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone(name) from None

    def _read_text(self, name: str) -> str:
        fd = self._open(name)
        try:
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
        except ProcessLookupError:
            raise _Gone(name) from None
        finally:
            os.close(fd)
        return b"".join(chunks).decode(errors="surrogateescape")

    def state(self) -> str:
        try:
            stat = self._read_text("stat")
        except _Gone:
            return "X"
        return stat.rpartition(")")[2].split()[0] if ")" in stat else "?"

    def thread_states(self) -> list[str]:
        try:
            task = os.open("task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.dirfd)
        except OSError:
            return []
        out = []
        try:
            for t in os.listdir(task):
                try:
                    fd = os.open(f"{t}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=task)
                except OSError:
                    continue  # a thread that just exited
                try:
                    s = os.read(fd, 4096).decode(errors="replace")
                except OSError:
                    continue
                finally:
                    os.close(fd)
                out.append(s.rpartition(")")[2].split()[0] if ")" in s else "?")
        finally:
            os.close(task)
        return out

    def cmdline(self) -> list[str]:
        try:
            raw = self._read_text("cmdline")
        except (_Gone, OSError):
            return []
        return [a for a in raw.split("\0") if a]

    def comm(self) -> str:
        try:
            return self._read_text("comm").strip()
        except (_Gone, OSError):
            return "?"

    def maps(self, smaps: bool = False) -> list[Mapping]:
        name = "smaps" if smaps else "maps"
        try:
            text = self._read_text(name)
        except PermissionError as e:
            raise _permission_error(self.pid, f"reading /proc/{self.pid}/{name}", e) from None
        ms = parse_maps(text, smaps=smaps)
        if not ms:
            if self.state() not in ("Z", "X"):
                raise CaptureError(f"process {self.pid} has no memory mappings (a kernel thread?)")
            raise _Gone(name)  # a zombie has no mappings
        return ms

    def read(self, addr: int, view: memoryview) -> list[tuple[int, int]]:
        """Read ``len(view)`` bytes at ``addr`` into ``view``. Returns the ranges ``(lo, hi)`` (byte offsets
        into ``view``, page aligned) the kernel refused (EIO/EFAULT), which are zero-filled."""
        n = len(view)
        pos = 0
        bad: list[tuple[int, int]] = []
        while pos < n:
            try:
                k = os.preadv(self.memfd, [view[pos:]], addr + pos)
            except OSError as e:
                if e.errno in (errno.EIO, errno.EFAULT):
                    nxt = min(n, (pos // PAGE_SIZE + 1) * PAGE_SIZE)
                    view[pos:nxt] = bytes(nxt - pos)
                    if bad and bad[-1][1] == pos:
                        bad[-1] = (bad[-1][0], nxt)
                    else:
                        bad.append((pos, nxt))
                    pos = nxt
                    continue
                if e.errno == errno.ESRCH:
                    raise _Gone("mem") from None
                if e.errno in (errno.EACCES, errno.EPERM):
                    raise _permission_error(self.pid, f"reading /proc/{self.pid}/mem", e) from None
                raise
            if k == 0:
                raise _Gone("mem")  # the address space is gone (exit or exec)
            pos += k
        return bad

    def pagemap(self, addr: int, npages: int) -> np.ndarray:
        if self.pagemapfd < 0:
            self.pagemapfd = self._open("pagemap")
        want = npages * 8
        raw = os.pread(self.pagemapfd, want, addr // PAGE_SIZE * 8)
        if len(raw) < want:  # only past the end of the address space
            raw = raw + bytes(want - len(raw))
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)

    def clear_soft_dirty(self) -> None:
        fd = self._open("clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"4")
        except ProcessLookupError:
            raise _Gone("clear_refs") from None
        finally:
            os.close(fd)

    def signal(self, sig: int) -> None:
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            raise _Gone("signal") from None
        except PermissionError as e:
            raise _permission_error(self.pid, f"sending signal {signal.Signals(sig).name}", e) from None

    def stop(self, timeout: float = 5.0) -> bool:
        """SIGSTOP and wait until every thread is stopped; False if that was not seen within ``timeout``."""
        self.signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            states = self.thread_states()
            if not states or any(s in ("Z", "X") for s in states) and self.state() in ("Z", "X"):
                raise _Gone("stop")
            if all(s in ("T", "t", "Z", "X") for s in states):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def cont(self) -> None:
        try:
            self.signal(signal.SIGCONT)
        except _Gone:
            pass

    def close(self) -> None:
        for name in ("memfd", "pagemapfd", "pidfd", "dirfd"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)
