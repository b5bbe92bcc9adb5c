"""``pagecodec capture process``: a live process's writable memory as a trace.

The main tests drive a child Python process of their own, step by step: after each round is read, the
capture's progress callback tells the child to make one write step and waits for its reply, so every
round's expected content is known exactly. The child's buffer (32 pages, one anonymous mapping):

* A, pages 0–7: a counter (the step number) in each page's first 8 bytes;
* B, pages 8–15: rewritten with a step-dependent byte;
* C, pages 16–23: never touched after set-up;
* D, pages 24–31: rewritten with their own content (soft-dirty, unchanged).

Diffing must report exactly A ∪ B; soft-dirty A ∪ B ∪ D (D with unchanged content) and never C. This
kernel may lack CONFIG_MEM_SOFT_DIRTY: the soft-dirty path then runs against an emulated pagemap
(tracking content changes since the last clear_refs, plus D), and the real-kernel variant is skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pagecodec.chain.config import parse_spec
from pagecodec.harness.replay import verify
from pagecodec.sources import process as proc_mod
from pagecodec.trace.format import TraceReader
from pagecodec.sources.process import (
    PM_PRESENT,
    PM_SOFT_DIRTY,
    CaptureError,
    Mapping,
    ProcessGoneError,
    capture_process,
    parse_maps,
    select_blocks,
    soft_dirty_supported,
)

PS = 4096
A, B, C, D = range(0, 8), range(8, 16), range(16, 24), range(24, 32)
NPAGES = 32

CHILD = textwrap.dedent(
    """
    import ctypes, mmap, struct, sys
    PS, N = 4096, 32
    buf = mmap.mmap(-1, N * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for p in range(N):
        buf[p * PS:(p + 1) * PS] = bytes([p + 1]) * PS
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    print(addr, flush=True)
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "step":
            k = int(arg[0])
            for p in range(0, 8):
                struct.pack_into("<Q", buf, p * PS, k)
            buf[8 * PS:16 * PS] = bytes([0x80 + k]) * (8 * PS)
            buf[24 * PS:32 * PS] = bytes(buf[24 * PS:32 * PS])
            print("ok", flush=True)
        elif cmd == "exit":
            sys.exit(3)
    """
)


def expected_page(p: int, step: int) -> bytes:
    page = bytearray([p + 1]) * PS
    if step:
        if p in A:
            page[:8] = step.to_bytes(8, "little")
        elif p in B:
            page[:] = bytes([0x80 + step]) * PS
    return bytes(page)


class Child:
    def __init__(self, tmp_path):
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        self.p = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)
        self.addr = int(self.p.stdout.readline())
        self.pid = self.p.pid

    def step(self, k: int) -> None:
        self.p.stdin.write(f"step {k}\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == "ok"

    def exit(self) -> None:
        self.p.stdin.write("exit\n")
        self.p.stdin.flush()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def child(tmp_path):
    c = Child(tmp_path)
    yield c
    c.close()


def stepper(child: Child):
    """progress callback: after round r, the child makes write step r + 1."""
    def progress(r: int, rounds: int, pages: int) -> None:
        if r + 1 < rounds:
            child.step(r + 1)
    return progress


def buffer_rounds(path, rep, addr):
    """Per round: {page index in the child's buffer: page bytes} from the trace."""
    b = rep.block(addr)
    first = (addr - b.start) // PS
    out: dict[int, dict[int, bytes]] = {}
    with TraceReader(path) as r:
        bi = r.meta.block_index(b.name)
        for batch in r.batches():
            sel = batch.block == bi
            for off, page in zip(batch.offset[sel].tolist(), batch.pages[sel]):
                p = off // PS - first
                if 0 <= p < NPAGES:
                    out.setdefault(batch.round, {})[p] = page.tobytes()
        assert r.num_rounds == rep.rounds
        out = {k: out.get(k, {}) for k in range(r.num_rounds)}
    return out


def check_round0(rounds):
    assert sorted(rounds[0]) == list(range(NPAGES))
    for p, page in rounds[0].items():
        assert page == expected_page(p, 0), p


def check_verify(path, pm):
    for spec in ("none", "xbzrle"):
        with TraceReader(path) as r:
            res = verify(r, parse_spec(spec, pm.presets), pm)
        assert res.mismatch is None, (spec, res.mismatch)


# --------------------------------------------------------------------------------------------------
# The diff method, on this kernel
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("freeze", [True, False])
def test_diff_method_records_exactly_the_changed_pages(tmp_path, child, pm, freeze):
    out = tmp_path / "t.parquet"
    rep = capture_process(child.pid, out, interval=0.05, rounds=4, method="diff", freeze=freeze,
                          include=[hex(child.addr)], progress=stepper(child))
    assert rep.method == "diff" and rep.frozen is freeze and rep.rounds == 4
    b = rep.block(child.addr)
    assert b.name == f"anon@{b.start:x}" and b.perms == "rw-p" and b.size >= NPAGES * PS
    assert len(rep.blocks) == 1 and rep.ram_bytes == b.size
    rounds = buffer_rounds(out, rep, child.addr)
    check_round0(rounds)
    for k in (1, 2, 3):
        assert sorted(rounds[k]) == list(A) + list(B), k  # exactly the changed pages: no C, no D
        for p, page in rounds[k].items():
            assert page == expected_page(p, k), (k, p)
    with TraceReader(out) as r:
        assert r.pages_per_round == rep.pages_per_round
        assert r.version == 2 and r.timing.kind == ("image", "slice", "slice", "slice")
        assert list(r.timing.time_s) == rep.round_times
        assert r.meta.provenance.source == "process"
        cmd = r.meta.provenance.command
        assert cmd.startswith(f"pagecodec capture process --pid {child.pid} -o {out} --interval 0.05 --rounds 4")
        assert "--method diff" in cmd and ("--no-freeze" in cmd) is not freeze
        assert "# method=diff; kernel=Linux " in cmd and "child.py" in cmd
    check_verify(out, pm)


def test_auto_method_reports_what_the_kernel_offers(tmp_path, child):
    supported, why = soft_dirty_supported()
    rep = capture_process(child.pid, tmp_path / "t.parquet", interval=0.05, rounds=2, include=[hex(child.addr)],
                          progress=stepper(child))
    assert rep.method == ("soft-dirty" if supported else "diff")
    assert why in rep.method_reason
    if not supported:
        with pytest.raises(CaptureError, match="soft-dirty tracking unavailable"):
            capture_process(child.pid, tmp_path / "u.parquet", rounds=2, method="soft-dirty")
        assert not (tmp_path / "u.parquet").exists()


# --------------------------------------------------------------------------------------------------
# The soft-dirty method: the real kernel's if it has it, else an emulated pagemap
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def emulated_soft_dirty(monkeypatch, child):
    """pagemap/clear_refs emulated over the child's buffer: a page is soft-dirty if its content changed
    since the last clear, or if it is a D page (rewritten with the same bytes every step)."""
    lo, hi = child.addr, child.addr + NPAGES * PS
    state: dict[str, bytes] = {}
    calls: list[str] = []

    def clear_soft_dirty(self):
        calls.append("clear")
        buf = bytearray(hi - lo)
        self.read(lo, memoryview(buf))
        state["snap"] = bytes(buf)

    def pagemap(self, addr, npages):
        calls.append("pagemap")
        buf = bytearray(npages * PS)
        self.read(addr, memoryview(buf))
        pm = np.full(npages, PM_PRESENT, dtype=np.uint64)
        for i in range(npages):
            a = addr + i * PS
            if lo <= a < hi:
                p = (a - lo) // PS
                if buf[i * PS:(i + 1) * PS] != state["snap"][p * PS:(p + 1) * PS] or p in D:
                    pm[i] |= PM_SOFT_DIRTY
        return pm

    monkeypatch.setattr(proc_mod, "soft_dirty_supported", lambda: (True, "emulated"))
    monkeypatch.setattr(proc_mod._Proc, "clear_soft_dirty", clear_soft_dirty)
    monkeypatch.setattr(proc_mod._Proc, "pagemap", pagemap)
    return calls


@pytest.mark.parametrize("kernel", ["emulated", "real"])
def test_soft_dirty_method_keeps_dirty_pages_with_unchanged_content(tmp_path, child, pm, request, kernel):
    if kernel == "real":
        ok, why = soft_dirty_supported()
        if not ok:
            pytest.skip(f"this kernel has no soft-dirty tracking: {why}")
    else:
        request.getfixturevalue("emulated_soft_dirty")
    out = tmp_path / "t.parquet"
    rep = capture_process(child.pid, out, interval=0.05, rounds=4, method="soft-dirty",
                          include=[hex(child.addr)], progress=stepper(child))
    assert rep.method == "soft-dirty"
    rounds = buffer_rounds(out, rep, child.addr)
    check_round0(rounds)
    for k in (1, 2, 3):
        got = set(rounds[k])
        assert set(A) | set(B) | set(D) <= got, k  # D was written (same bytes): soft-dirty keeps it
        assert not got & set(C), k                  # C was never written
        for p, page in rounds[k].items():
            assert page == expected_page(p, k), (k, p)
    with TraceReader(out) as r:  # a timed dirty log, whatever the method
        assert r.version == 2 and r.timing.kind == ("image", "slice", "slice", "slice")
        assert list(r.timing.time_s) == rep.round_times
    check_verify(out, pm)


def test_soft_dirty_reads_pagemap_before_clearing(tmp_path, child, emulated_soft_dirty):
    capture_process(child.pid, tmp_path / "t.parquet", interval=0.02, rounds=3, method="soft-dirty",
                    include=[hex(child.addr)], progress=stepper(child))
    calls = emulated_soft_dirty
    # probe clear, round 0: clear then pagemap (present bits); rounds 1, 2: pagemap then clear
    assert calls == ["clear", "pagemap", "clear", "pagemap", "pagemap", "clear", "pagemap", "clear"]


# --------------------------------------------------------------------------------------------------
# Launching a command; the CLI
# --------------------------------------------------------------------------------------------------

BUSY = "import time\nx = bytearray(1 << 20)\ni = 0\nwhile True:\n    x[i % len(x)] = i % 251 + 1\n    i += 4096\n    time.sleep(0.0005)\n"


def test_cli_launches_records_and_terminates_a_command(tmp_path, pm, capsys):
    from pagecodec.cli import main

    out = tmp_path / "busy.parquet"
    main(["capture", "process", "-o", str(out), "--rounds", "3", "--interval", "0.2", "--warmup", "0.3",
          "--max-mib", "4", "--", sys.executable, "-c", BUSY])
    printed = capsys.readouterr()
    assert f"-> {out}: " in printed.out and "dirty detection: " in printed.out
    assert "over the cap" in printed.err
    with TraceReader(out) as r:
        assert r.num_rounds == 3 and r.meta.ram_bytes <= 4 << 20
        assert r.pages_per_round[1] > 0  # the bytearray is written all the time
        cmd = r.meta.provenance.command
        assert cmd.startswith(f"pagecodec capture process -o {out} --interval 0.2 --rounds 3 --max-mib 4 --warmup 0.3 -- ")
        assert "-c" in cmd and "# method=" in cmd
        names = [b.name for b in r.meta.blocks]
    assert "heap" in names and "stack" in names
    assert any(n.endswith("@rw") and "libc.so" in n for n in names)
    check_verify(out, pm)


def test_launched_command_is_terminated(tmp_path):
    rep = capture_process([sys.executable, "-c", BUSY], tmp_path / "t.parquet", rounds=2, interval=0.05, warmup=0.2,
                          max_bytes=2 << 20)
    assert rep.launched and rep.exit_status == -signal.SIGTERM
    assert not os.path.exists(f"/proc/{rep.pid}")  # reaped
    assert sum(b.size for b in rep.blocks) == rep.ram_bytes <= 2 << 20
    assert any("over the cap" in w for w in rep.warnings)


def test_command_exiting_during_warmup(tmp_path):
    with pytest.raises(CaptureError, match=r"exited during the 2 s warm-up with status 5"):
        capture_process([sys.executable, "-c", "import sys; sys.exit(5)"], tmp_path / "t.parquet", warmup=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_usage_and_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "pagecodec.cli", "capture", "process", *a],  # noqa: E731
                                    capture_output=True, text=True)
    p = run("-o", str(tmp_path / "t.parquet"))
    assert p.returncode == 2 and "give either --pid PID or -- CMD" in p.stderr
    p = run("--pid", str((1 << 22) + 1), "-o", str(tmp_path / "t.parquet"))
    assert p.returncode == 2 and p.stderr.strip() == f"pagecodec: error: no process with pid {(1 << 22) + 1}"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Errors: nothing is written
# --------------------------------------------------------------------------------------------------


def test_nonexistent_pid(tmp_path):
    with pytest.raises(CaptureError, match=rf"no process with pid {(1 << 22) + 1}$"):
        capture_process((1 << 22) + 1, tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reaped", [False, True], ids=["zombie", "reaped"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_process_exiting_mid_capture(tmp_path, child, reaped, existing):
    out = tmp_path / "t.parquet"
    if existing:
        out.write_bytes(b"previous")

    def progress(r, rounds, pages):
        if r == 1:
            child.exit()
            if reaped:
                child.p.wait(5)
            else:
                os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie

    with pytest.raises(ProcessGoneError, match=rf"^process {child.pid} \(python[0-9.]*\) exited.* during round 2 of 5"):
        capture_process(child.pid, out, interval=0.02, rounds=5, include=[hex(child.addr)], progress=progress)
    if existing:
        assert out.read_bytes() == b"previous"  # an aborted capture leaves an existing file alone
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py"] + (["t.parquet"] if existing else [])


def test_permission_denied_is_a_clear_error(tmp_path, child):
    """An unprivileged user cannot attach to root's process (forked child drops to nobody)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                capture_process(child.pid, "/nonexistent-dir/t.parquet", rounds=1)
                msg = "no error"
            except CaptureError as e:
                msg = str(e)
            except BaseException as e:
                msg = f"{type(e).__name__}: {e}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 20
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("unprivileged child hung")
        time.sleep(0.01)
    msg = os.read(r, 4096).decode()
    os.close(r)
    assert msg.startswith(f"permission denied: opening /proc/{child.pid}/mem of process {child.pid}"), msg
    assert "ptrace" in msg


# --------------------------------------------------------------------------------------------------
# Mappings to blocks (pure functions)
# --------------------------------------------------------------------------------------------------

MAPS = """\
55d0a0000000-55d0a0001000 r--p 00000000 fd:01 1234                       /usr/bin/prog
55d0a0001000-55d0a0003000 rw-p 00001000 fd:01 1234                       /usr/bin/prog
55d0a1000000-55d0a1400000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000800000 rw-p 00000000 00:00 0 
7f0000800000-7f0000801000 ---p 00000000 00:00 0 
7f0000801000-7f0000802000 -w-p 00000000 00:00 0 
7f0001000000-7f0001002000 rw-s 00000000 00:05 77                         /dev/shm/x
7f0001100000-7f0001101000 rw-s 00000000 00:01 78                         /dev/zero (deleted)
7f0002000000-7f0002001000 rw-p 00002000 fd:01 99                         /usr/lib/libc.so.6
7f0002001000-7f0002002000 rw-p 00003000 fd:01 99                         /usr/lib/libc.so.6
7f0003000000-7f0003001000 rw-p 00000000 00:00 0                          [anon:jemalloc]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0                          [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_parse_maps_and_block_names():
    ms = parse_maps(MAPS)
    assert len(ms) == 15 and ms[-1].start == 0xFFFFFFFFFF600000
    blocks, skipped, warnings = select_blocks(ms, max_bytes=None)
    assert [b.name for b in blocks] == [
        "/usr/bin/prog@rw", "heap", "anon@7f0000000000", "/dev/shm/x@rws", "anon-shared@7f0001100000",
        "/usr/lib/libc.so.6@rw",
        "/usr/lib/libc.so.6@rw@7f0002001000", "anon:jemalloc", "stack",
    ]
    assert [b.size for b in blocks] == [0x2000, 0x400000, 0x800000, 0x2000, 0x1000, 0x1000, 0x1000, 0x1000, 0x21000]
    assert [s[1] for s in skipped] == ["writable but not readable"]
    assert warnings == []
    only = select_blocks(ms, include=["heap", "0x7f0000000123", "/dev/shm/*"], max_bytes=None)[0]
    assert [b.name for b in only] == ["heap", "anon@7f0000000000", "/dev/shm/x@rws"]


def test_smaps_kernel_page_size():
    text = ("7f0000000000-7f0000400000 rw-s 00000000 00:0f 5 /anon_hugepage (deleted)\n"
            "Size:               4096 kB\nKernelPageSize:     2048 kB\nMMUPageSize:        2048 kB\n"
            "VmFlags: rd wr sh mr mw me ms de ht sd\n"
            "7f0000400000-7f0000401000 rw-p 00000000 00:00 0 \nKernelPageSize:        4 kB\n")
    ms = parse_maps(text, smaps=True)
    assert [(m.size, m.kernel_page_size) for m in ms] == [(4 << 20, 2 << 20), (4096, 4096)]
    blocks = select_blocks(ms, max_bytes=None)[0]
    assert [(b.name, b.host_page_size) for b in blocks] == [("/anon_hugepage (deleted)@rws", 2 << 20),
                                                             ("anon@7f0000400000", 4096)]


def test_cap_trims_the_largest_mappings_first():
    ms = [Mapping(0x10000 * (i + 1) << 12, (0x10000 * (i + 1) << 12) + s, "rw-p", 0, 0, "")
          for i, s in enumerate([8 << 20, 4096, 64 << 10, 2 << 20, 8 << 20])]
    blocks, skipped, warnings = select_blocks(ms, max_bytes=4 << 20)
    # small ones whole; the three large ones share the rest (1007 pages): 335 each, the 2 left over go to
    # the first ones in address order (water-filling)
    assert [b.size // PS for b in blocks] == [336, 1, 16, 336, 335]
    assert sum(b.size for b in blocks) == 4 << 20 and not skipped
    assert "over the cap" in warnings[0] and sum(w.startswith("block ") for w in warnings) == 3
    # a trimmed mapping's window starts at its first resident page (a stack keeps its top end)
    top = {ms[0].start: (ms[0].end - 3 * PS, ms[0].end), ms[3].start: (ms[3].start + 5 * PS, ms[3].start + 9 * PS)}
    placed = select_blocks(ms, max_bytes=4 << 20, resident=lambda m: top.get(m.start))[0]
    assert [b.start - m.start for b, m in zip(placed, ms)] == [(8 << 20) - 336 * PS, 0, 0, 5 * PS, 0]
    tiny, skipped, _ = select_blocks(ms, max_bytes=3 * PS)
    assert [(b.start, b.size) for b in tiny] == [(ms[0].start, PS), (ms[1].start, PS), (ms[2].start, PS)]
    assert [s[1] for s in skipped] == [f"over the {3 * PS} byte cap"] * 2
