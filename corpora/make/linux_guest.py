#!/usr/bin/env python3
"""Make a real trace of a Linux guest under QEMU (issue #4, item 7): boot a small guest built from
pinned Debian packages, run one workload in it, migrate it to a file over several passes, import the
stream as a pagecodec trace.

    python corpora/make/linux_guest.py --workload gunzip-sort -o corpora/linux-gunzip-sort.trace.parquet

The guest (Debian bookworm packages pinned in ``DEBS``, fetched with ``apt-get download``, checked by
sha256):

* kernel (``--kernel tiny``, the default): Linux 6.1.192 built from ``linux-source-6.1`` 6.1.192-2 (the
  source of the kernel ``linux-image-amd64`` 6.1.192-2 depends on) with ``make tinyconfig`` plus
  ``TINY_CONFIG`` (serial console, initramfs, ELF, tmpfs, devtmpfs, RTC), cached in ``--cache``.
  ``--kernel debian`` boots ``linux-image-6.1.0-56-amd64``'s own ``/boot/vmlinuz`` instead; it needs
  ≥ 96 MiB and keeps ~45 MiB resident, so its traces come out near 20 MiB (see README.md);
* initramfs (gzip'd cpio ``newc``, written here byte-reproducibly: fixed mtimes and owners): the
  static busybox of ``busybox-static``, an ``/init`` shell script (ours, below) that mounts
  proc/sys/devtmpfs/tmpfs, starts the workload and prints a marker line on the serial console, the
  ``counters`` program (ours: x86-64 assembly below, assembled with the host's binutils), and
  ``/data/changelog.gz``: ``linux-source-6.1``'s ``/usr/share/doc/linux-source-6.1/changelog.Debian.gz``,
  the real data the ``gunzip-sort`` and ``mixed`` workloads decompress and sort;
* QEMU: ``-machine pc-i440fx-7.2 -accel tcg -m MEM -display none -nodefaults -kernel … -initrd …
  -append 'console=ttyS0 quiet' -serial file:… -no-reboot`` (pagecodec.qemu.machine.VM;
  ``-nodefaults -display none -serial file:`` is ``-nographic`` with the console going to a file we
  read), one vCPU, no network, no disk.

Capture: wait for the marker, let the workload run ``--settle`` seconds, then migrate with every page
capability off (pagecodec.qemu.migrate.migrate_to_file: ``exec:cat > FILE``, tiny ``downtime-limit``)
at ``--bulk-bandwidth``; near the end of the bulk pass (``ram.remaining`` ≤ ``--switch-at``) lower
max-bandwidth to ``--max-bandwidth`` for the later passes; after ``--passes`` dirty-bitmap syncs
migrate_to_file raises both limits so it completes. Import the stream with
pagecodec.sources.qemu_stream.import_qemu_stream (provenance ``qemu-stream``, command: this command line)
and print a JSON summary (what corpora/MANIFEST.json records).
A TCG guest is not deterministic, so a re-run gives a trace of the same kind, not the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from pagecodec.qemu import QemuError  # noqa: E402
from pagecodec.qemu.find import require_qemu  # noqa: E402
from pagecodec.qemu.machine import VM  # noqa: E402
from pagecodec.qemu.migrate import MigrationSettings, migrate_to_file  # noqa: E402
from pagecodec.trace.format import TraceReader  # noqa: E402
from pagecodec.sources.qemu_stream import import_qemu_stream  # noqa: E402

#: Debian bookworm packages the guest is made of: (package, version, sha256 of the .deb).
KERNEL_VERSION = "6.1.192-2"
KERNEL_ABI = "6.1.0-56-amd64"
DEBS = {
    "source": ("linux-source-6.1", KERNEL_VERSION,
               "ae95fe63d4c553f8d0e6c86cb1ab566f3894a43743eb19ab585cd97d82f26514"),
    "busybox": ("busybox-static", "1:1.35.0-4+deb12u1+b1",
                "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"),
    # only for --kernel debian: the binary kernel linux-image-amd64 6.1.192-2 depends on
    "image": (f"linux-image-{KERNEL_ABI}", KERNEL_VERSION,
              "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1"),
}
SOURCE_TARBALL = "./usr/src/linux-source-6.1.tar.xz"
DATA_MEMBER = "./usr/share/doc/linux-source-6.1/changelog.Debian.gz"
IMAGE_MEMBER = f"./boot/vmlinuz-{KERNEL_ABI}"
BUSYBOX_MEMBER = "./bin/busybox"
APPEND = "console=ttyS0 quiet"
#: The small kernel (--kernel tiny, the default): ``make tinyconfig`` of Debian's linux-source-6.1
#: plus what a busybox userland with a serial console needs. Debian's own binary kernel keeps ~45 MiB
#: resident (14 MiB of code alone), which compresses to ~14 MiB in round 0 of a trace: no room for
#: passes within the 16 MiB per-trace budget (see README.md).
TINY_CONFIG = """\
CONFIG_64BIT=y
CONFIG_PRINTK=y
CONFIG_TTY=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_BINFMT_ELF=y
CONFIG_BINFMT_SCRIPT=y
CONFIG_DEVTMPFS=y
CONFIG_PROC_FS=y
CONFIG_PROC_SYSCTL=y
CONFIG_SYSFS=y
CONFIG_TMPFS=y
CONFIG_SHMEM=y
CONFIG_MULTIUSER=y
CONFIG_FUTEX=y
CONFIG_EPOLL=y
CONFIG_SIGNALFD=y
CONFIG_TIMERFD=y
CONFIG_EVENTFD=y
CONFIG_POSIX_TIMERS=y
CONFIG_FILE_LOCKING=y
CONFIG_HIGH_RES_TIMERS=y
CONFIG_NO_HZ_IDLE=y
CONFIG_HZ_250=y
CONFIG_RTC_CLASS=y
CONFIG_RTC_HCTOSYS=y
CONFIG_RTC_DRV_CMOS=y
CONFIG_UNWINDER_FRAME_POINTER=y
"""
KBUILD_ENV = {"KBUILD_BUILD_TIMESTAMP": "2026-11-16", "KBUILD_BUILD_USER": "pagecodec",
              "KBUILD_BUILD_HOST": "pagecodec"}
MARKER = "PAGECODEC-WORKLOAD-RUNNING"

# ------------------------------------------------------------------------------------------------
# the counters program: 1024 counter records scattered over a 4 MiB .bss region (one per page, at a
# page-dependent offset) plus a header page; every 50 ms it bumps 8 records picked by an LCG, writing
# count, CLOCK_REALTIME seconds and nanoseconds, and the header's tick count and timestamp.
# ------------------------------------------------------------------------------------------------
COUNTERS_ASM = r"""
        .set SYS_write, 1
        .set SYS_nanosleep, 35
        .set SYS_clock_gettime, 228
        .set NCOUNTERS, 1024
        .set PER_TICK, 8
        .text
        .globl _start
_start:
        mov     $SYS_write, %eax
        mov     $1, %edi
        lea     hello(%rip), %rsi
        mov     $hello_len, %edx
        syscall
        mov     $0x2545F491, %r12d          # LCG state
tick:
        incq    header(%rip)                # header page: tick count and last timestamp
        mov     $SYS_clock_gettime, %eax
        xor     %edi, %edi                  # CLOCK_REALTIME
        lea     header+8(%rip), %rsi
        syscall
        mov     $PER_TICK, %r14d
bump:
        imul    $1103515245, %r12d, %r12d
        add     $12345, %r12d
        mov     %r12d, %eax
        shr     $16, %eax
        and     $(NCOUNTERS-1), %eax        # counter index
        mov     %eax, %ecx
        imul    $200, %ecx, %ecx
        and     $0xfe0, %ecx                # offset of the record inside its page
        shl     $12, %rax
        add     %rcx, %rax
        lea     region(%rip), %rbx
        add     %rax, %rbx                  # record: u64 count, u64 tv_sec, u64 tv_nsec
        incq    (%rbx)
        mov     $SYS_clock_gettime, %eax
        xor     %edi, %edi
        lea     8(%rbx), %rsi
        syscall
        dec     %r14d
        jnz     bump
        mov     $SYS_nanosleep, %eax
        lea     period(%rip), %rdi
        xor     %esi, %esi
        syscall
        jmp     tick

        .section .rodata
hello:  .ascii  "counters: 1024 records over 4 MiB, 8 updates every 50 ms\n"
        .set hello_len, . - hello
        .balign 8
period: .quad   0, 50000000

        .bss
        .balign 4096
header: .skip   4096
region: .skip   NCOUNTERS * 4096
"""

# ------------------------------------------------------------------------------------------------
# /init and the workloads (busybox sh)
# ------------------------------------------------------------------------------------------------
INIT_HEAD = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=48m tmpfs /tmp
echo "pagecodec guest: $(uname -r), $(grep MemTotal /proc/meminfo), workload WORKLOAD"
"""

INIT_TAIL = r"""
sleep 1
echo "MARKER WORKLOAD"
while :; do sleep 3600; done
"""

#: gunzip the Debian changelog (1.3 MB .gz -> 3.7 MB, 63814 lines of text) and sort a 16384-line window
#: of it (a quarter; the window moves by 8192 lines each time), over and over.
SORT_LOOP = r"""
sort_loop() {
    i=0
    while :; do
        a=$(( (i % 6) * 8192 + 1 )); b=$(( a + 16383 ))
        gunzip -c /data/changelog.gz | sed -n "${a},${b}p" | sort > /tmp/sorted.txt
        i=$((i + 1))
        echo "gunzip-sort: pass $i, lines $a-$b, $(wc -l < /tmp/sorted.txt) sorted"
    done
}
"""

#: page cache churn: six 512 KiB text files (slices of the decompressed changelog) deleted, rewritten and
#: all read back, one per second in rotation, in tmpfs.
CHURN_LOOP = r"""
churn_loop() {
    j=0
    while :; do
        n=$((j % 6))
        rm -f /tmp/churn.$n
        gunzip -c /data/changelog.gz | dd of=/tmp/churn.$n bs=4k skip=$((n * 128)) count=128 2>/dev/null
        cat /tmp/churn.* | md5sum > /tmp/churn.sum
        j=$((j + 1))
        [ $((j % 5)) = 0 ] && echo "churn: $j files rewritten, $(ls /tmp/churn.? | wc -l) present, $(cut -c1-8 /tmp/churn.sum)"
        sleep 1
    done
}
"""

WORKLOADS = {
    "idle": ("a mostly idle guest: nothing runs but a shell loop that starts sleep 3 over and over (one "
             "short-lived process every 3 s, like a daemon's heartbeat), and the kernel's own timers",
             "while :; do sleep 3; done &\n"),
    "counters": (
        "sparse counter updates: the counters program bumps 8 of 1024 counter records (count + "
        "CLOCK_REALTIME timestamp) scattered one per page over 4 MiB, plus a header page, every 50 ms",
        "/bin/counters &\n",
    ),
    "gunzip-sort": (
        "decompress and sort real data: gunzip -c the kernel changelog.gz | sed -n A,Bp | sort > "
        "/tmp/sorted.txt (tmpfs) in a loop, a 16384-line window moving by 8192 lines each time",
        SORT_LOOP + "sort_loop &\n",
    ),
    "mixed": (
        "mixed: the counters program, the gunzip-sort loop and a page cache churn loop (six 512 KiB text "
        "files in tmpfs: one per second deleted and rewritten, then all read back) at once",
        SORT_LOOP + CHURN_LOOP + "/bin/counters &\nsort_loop &\nchurn_loop &\n",
    ),
}


def init_script(workload: str) -> str:
    body = WORKLOADS[workload][1]
    return (INIT_HEAD.replace("WORKLOAD", workload) + body
            + INIT_TAIL.replace("WORKLOAD", workload).replace("MARKER", MARKER))


# ------------------------------------------------------------------------------------------------
# building the guest
# ------------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_debs(cache: Path, keys: list[str]) -> dict[str, Path]:
    """``apt-get download`` the pinned packages into ``cache`` (once) and check their sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for key in keys:
        pkg, ver, digest = DEBS[key]
        found = [p for p in cache.glob(f"{pkg}_*.deb") if sha256_file(p) == digest]
        if not found:
            subprocess.run(["apt-get", "download", f"{pkg}={ver}"], cwd=cache, check=True,
                           stdout=subprocess.DEVNULL)
            found = [p for p in cache.glob(f"{pkg}_*.deb") if sha256_file(p) == digest]
            if not found:
                raise SystemExit(f"{pkg}={ver}: downloaded .deb does not have sha256 {digest}")
        out[key] = found[0]
    return out


def deb_members(deb: Path, names: set[str]) -> dict[str, bytes]:
    """Files of a .deb's data archive (``dpkg-deb --fsys-tarfile``)."""
    tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    got = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        for m in tf:
            if m.name in names and m.isfile():
                got[m.name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    missing = names - got.keys()
    if missing:
        raise SystemExit(f"{deb.name}: no {', '.join(sorted(missing))}")
    return got


def build_counters(work: Path) -> bytes:
    src = work / "counters.S"
    src.write_text(COUNTERS_ASM)
    subprocess.run(["as", "--64", "-o", str(work / "counters.o"), str(src)], check=True)
    subprocess.run(["ld", "-static", "-s", "--build-id=none", "-o", str(work / "counters"), str(work / "counters.o")],
                   check=True)
    return (work / "counters").read_bytes()


def cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A ``newc`` cpio archive: (name, mode, data, (rdev major, minor)); owner root, mtime 0."""
    out = bytearray()

    def pad4() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, (rmaj, rmin)) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1):
        nm = name.encode() + b"\0"
        fields = [ino if name != "TRAILER!!!" else 0, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(nm), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + nm)
        pad4()
        out.extend(data)
        pad4()
    return bytes(out)


def tool_versions() -> dict[str, str]:
    out = {}
    for tool, args in (("gcc", ["gcc", "--version"]), ("ld", ["ld", "--version"])):
        try:
            out[tool] = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[0]
        except (OSError, subprocess.CalledProcessError):
            out[tool] = "?"
    return out


def build_tiny_kernel(cache: Path, source_deb: Path) -> Path:
    """bzImage of ``make tinyconfig`` + TINY_CONFIG from Debian's linux-source-6.1 (cached by config)."""
    key = hashlib.sha256((DEBS["source"][2] + TINY_CONFIG + json.dumps(KBUILD_ENV)).encode()).hexdigest()[:16]
    out = cache / f"bzImage-tiny-{KERNEL_VERSION}-{key}"
    if out.exists():
        return out
    src_root = cache / f"linux-source-{KERNEL_VERSION}"
    tree = src_root / "linux-source-6.1"
    if not (tree / "Makefile").exists():
        shutil.rmtree(src_root, ignore_errors=True)
        src_root.mkdir(parents=True)
        print(f"extracting {source_deb.name} …", flush=True)
        subprocess.run(f"dpkg-deb --fsys-tarfile {shlex.quote(str(source_deb))} | tar -xO {SOURCE_TARBALL} | tar -xJ",
                       shell=True, cwd=src_root, check=True)
    env = {**os.environ, **KBUILD_ENV, "ARCH": "x86_64"}
    (tree / "pagecodec.fragment").write_text(TINY_CONFIG)
    subprocess.run(["make", "-s", "tinyconfig"], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["scripts/kconfig/merge_config.sh", "-m", ".config", "pagecodec.fragment"], cwd=tree, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["make", "-s", "olddefconfig"], cwd=tree, env=env, check=True)
    config = (tree / ".config").read_text()
    missing = [ln for ln in TINY_CONFIG.splitlines() if ln and ln not in config.splitlines()]
    if missing:
        raise SystemExit(f"kernel config did not take: {', '.join(missing)}")
    print(f"building the kernel (make -j{os.cpu_count()} bzImage; a few minutes) …", flush=True)
    subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", "bzImage"], cwd=tree, env=env, check=True)
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(tree / "arch/x86/boot/bzImage", tmp)
    (cache / f"{out.name}.config").write_text(config)
    os.replace(tmp, out)
    return out


def build_guest(work: Path, cache: Path, workload: str, kernel_kind: str) -> tuple[Path, Path, dict[str, str]]:
    debs = fetch_debs(cache, ["source", "busybox"] + (["image"] if kernel_kind == "debian" else []))
    data = deb_members(debs["source"], {DATA_MEMBER})[DATA_MEMBER]
    bb = deb_members(debs["busybox"], {BUSYBOX_MEMBER})[BUSYBOX_MEMBER]
    kernel = work / "vmlinuz"
    if kernel_kind == "debian":
        kernel.write_bytes(deb_members(debs["image"], {IMAGE_MEMBER})[IMAGE_MEMBER])
    else:
        shutil.copyfile(build_tiny_kernel(cache, debs["source"]), kernel)
    D, F, C = 0o040755, 0o100755, 0o020600
    entries = [
        ("bin", D, b"", (0, 0)), ("dev", D, b"", (0, 0)), ("dev/console", C, b"", (5, 1)),
        ("proc", D, b"", (0, 0)), ("sys", D, b"", (0, 0)), ("tmp", D, b"", (0, 0)), ("data", D, b"", (0, 0)),
        ("bin/busybox", F, bb, (0, 0)),
        ("bin/counters", F, build_counters(work), (0, 0)),
        ("data/changelog.gz", 0o100644, data, (0, 0)),
        ("init", F, init_script(workload).encode(), (0, 0)),
    ]
    initrd = work / "initrd.gz"
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(cpio_newc(entries))
    initrd.write_bytes(buf.getvalue())
    info = {"kernel": kernel_kind, "kernel_sha256": sha256_file(kernel), "initrd_sha256": sha256_file(initrd),
            "data": f"{DEBS['source'][0]}={DEBS['source'][1]}:{DATA_MEMBER[1:]} ({len(data)} bytes)",
            **tool_versions()}
    return kernel, initrd, info


# ------------------------------------------------------------------------------------------------
# running and capturing
# ------------------------------------------------------------------------------------------------
def wait_for(console: Path, text: str, vm: VM, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        vm.check_alive()
        if console.exists() and text in console.read_text(errors="replace"):
            return
        if time.monotonic() > deadline:
            tail = console.read_text(errors="replace")[-2000:] if console.exists() else "(no console output)"
            raise QemuError(f"no {text!r} on the serial console within {timeout:g} s; console:\n{tail}")
        time.sleep(0.2)


def parse_size(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1].upper()] if s and s[-1].upper() in mult else int(s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("-o", "--output", required=True, type=Path, help="trace file to write")
    ap.add_argument("--memory", type=int, default=64, help="guest RAM in MiB (default 64)")
    ap.add_argument("--kernel", choices=["tiny", "debian"], default="tiny",
                    help="tiny: built from linux-source-6.1 (default); debian: linux-image-amd64's vmlinuz "
                         "(needs --memory 96 or more; traces come out near 20 MiB)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds the workload runs before migrating")
    ap.add_argument("--bulk-bandwidth", default="16M",
                    help="max-bandwidth during the first pass (the bulk stage), bytes/s (K/M/G)")
    ap.add_argument("--max-bandwidth", default="256K",
                    help="max-bandwidth for the later passes, bytes/s (set near the end of the bulk pass, see "
                         "--switch-at: a short pass at the bulk rate could end the migration before we notice)")
    ap.add_argument("--switch-at", default="4M",
                    help="switch to --max-bandwidth once ram.remaining is this low (or dirty-sync-count is 2)")
    ap.add_argument("--downtime-limit", type=int, default=1, help="downtime-limit (ms) while iterating")
    ap.add_argument("--passes", type=int, default=8, help="raise the limits after this many dirty syncs")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pagecodec-linux-guest",
                    help="where the .deb files are downloaded")
    ap.add_argument("--keep", type=Path, help="keep the work folder (kernel, initrd, console log, stream) here")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before the migration is given up")
    a = ap.parse_args(argv)

    qemu = require_qemu()
    command = " ".join(shlex.quote(x) for x in [
        "python", "corpora/make/linux_guest.py", "--workload", a.workload, "--kernel", a.kernel,
        "--memory", str(a.memory),
        "--settle", f"{a.settle:g}", "--bulk-bandwidth", a.bulk_bandwidth, "--max-bandwidth", a.max_bandwidth,
        "--switch-at", a.switch_at, "--downtime-limit", str(a.downtime_limit),
        "--passes", str(a.passes), "-o", str(a.output)])
    work = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))  # short: the QMP socket path must fit sun_path
    try:
        kernel, initrd, info = build_guest(work, a.cache, a.workload, a.kernel)
        console = work / "console.log"
        extra = ["-kernel", str(kernel), "-initrd", str(initrd), "-append", APPEND,
                 "-serial", f"file:{console}", "-no-reboot"]
        bulk_bw, iter_bw, switch_at = parse_size(a.bulk_bandwidth), parse_size(a.max_bandwidth), parse_size(a.switch_at)
        settings = MigrationSettings(max_bandwidth=bulk_bw, downtime_limit=a.downtime_limit,
                                     finish_after_passes=a.passes)
        t0 = time.monotonic()
        with VM(work, name="guest", memory_mib=a.memory, extra_args=extra, qmp_timeout=60) as vm:
            wait_for(console, f"{MARKER} {a.workload}", vm, timeout=300)
            boot = time.monotonic() - t0
            print(f"[{a.workload}] workload running after {boot:.1f} s; settling {a.settle:g} s", flush=True)
            time.sleep(a.settle)

            switched = []

            def progress(p) -> None:  # type: ignore[no-untyped-def]
                # migrate_to_file sets one max-bandwidth; the bulk pass goes faster than the later ones
                # (sync 1 is ram_save_setup's, so sync 2 ends the bulk pass)
                if (not switched and p.status == "active" and p.passes < a.passes
                        and (p.passes >= 2 or (p.transferred > 0 and p.remaining <= switch_at))):
                    vm.qmp.execute("migrate-set-parameters", max_bandwidth=iter_bw)
                    switched.append(p.elapsed)
                    print(f"[{a.workload}] {p.remaining} bytes left in the bulk pass after {p.elapsed:.1f} s: "
                          f"max-bandwidth {iter_bw}", flush=True)
                if int(p.elapsed * 10) % 50 == 0:
                    print(f"[{a.workload}] {p.status}: {p.passes} syncs, {p.mb:.1f} MB sent, {p.elapsed:.0f} s",
                          flush=True)

            mig = migrate_to_file(vm.qmp, work / "stream.mig", settings, progress=progress, timeout=a.timeout,
                                  poll=0.1, alive=vm.exit_reason)
            print(f"[{a.workload}] migrated: {mig.passes} syncs, {mig.transferred / 1e6:.1f} MB, "
                  f"{mig.elapsed:.1f} s, stream {mig.size} bytes", flush=True)
        rep = import_qemu_stream(work / "stream.mig", a.output, command=command)
        with TraceReader(a.output) as r:
            summary = {"file": a.output.name, "bytes": a.output.stat().st_size, "sha256": r.sha256(),
                       "rounds": r.num_rounds, "pages": r.num_pages, "ram_bytes": r.meta.ram_bytes,
                       "page_size": r.meta.page_size, "pages_per_round": list(r.pages_per_round)}
        summary.update({
            "workload": a.workload, "command": command, "qemu": qemu.banner,
            "migration": {"bulk max-bandwidth": bulk_bw, "max-bandwidth": iter_bw, "switch_at": switch_at,
                          "switched_after_s": switched[0] if switched else None,
                          "downtime-limit": settings.downtime_limit,
                          "finish_after_syncs": a.passes, "syncs": mig.passes, "transferred": mig.transferred,
                          "seconds": round(mig.elapsed, 1), "records": rep.records},
            "guest": info, "debs": {k: f"{p}={v}" for k, (p, v, _) in DEBS.items() if k != "image" or a.kernel == "debian"},
            "console_tail": console.read_text(errors="replace")[-1500:],
        })
        print(json.dumps(summary, indent=2))
        return 0
    finally:
        if a.keep is not None:
            a.keep.mkdir(parents=True, exist_ok=True)
            for p in work.iterdir():
                if p.is_file():
                    shutil.copy2(p, a.keep / p.name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
