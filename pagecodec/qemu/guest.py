"""A tiny guest of our own: a 512-byte real-mode boot sector that dirties memory in a chosen pattern.

Assembled at run time with binutils (``as --32`` in ``.code16`` mode, ``ld -Ttext 0x7c00 --oformat
binary``) and padded to a raw disk image for ``-drive file=…,format=raw,if=ide``. SeaBIOS loads it at
0x7c00 and jumps to it. Each *pass* of the guest:

1. increments the 32-bit pass counter at linear address :data:`PASS_COUNTER` (0x8000, a page of its
   own), then ``invlpg`` on it;
2. **counter pages** — of the pages from ``first`` to ``end`` (exclusive) in steps of ``stride``,
   bumps the byte at ``offset`` (``incb``) in ``window`` consecutive ones from a cursor that wraps at
   ``end`` (default: all of them every pass), then ``invlpg`` on each: under TCG, a page's repeated
   writes show as dirty again only after the guest drops its TLB entry. A window smaller than the
   region makes a *moving* working set: the pages dirty after ``t`` seconds grow with ``t`` (one
   window per pass) until the region is covered, which is what makes QEMU need several passes;
3. **fill pages** — rewrites the first ``fill_bytes`` bytes (default: all 4096) of ``fill_pages``
   pages from ``fill_first`` with ``rep stosb`` of the pass counter's low byte: whole-page rewrites
   (XBZRLE overflows, raw pages) or big partial ones (large XBZRLE records);
4. waits: ``wait_ticks`` timer interrupts (``sti; hlt``, the BIOS's PIT at 18.2 Hz: ~55 ms each, the
   vCPU sleeps meanwhile) and then ``spin`` × 65536 iterations of a busy loop.

The signature ``PGCD`` at :data:`SIGNATURE_ADDR` (0x8004) tells a memory dump that the guest runs.

Why ``invlpg`` right after the last access to a page in a pass: TCG marks a page dirty only on a write
through a TLB entry that was filled while the page was clean in the migration bitmap. Any access that
refills the entry while the page is still dirty (before the migration thread's next bitmap sync) makes
later writes invisible to migration until the entry is dropped again. So each page is touched in one
burst and then flushed. Page 0 is beyond our control: the BIOS timer interrupt reads the vector table
and bumps the tick count at 0x46c 18 times a second, so a destination's page 0 may be stale (QEMU's
own migration misses those writes; the guest's pages are exact).
Addresses are linear (real mode, segment = address >> 4): pages must lie in 0x10000 … 0x9f000 (above
the boot sector and its stack, below the EBDA at 0x9fc00).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import QemuError

__all__ = ["GuestPattern", "ASM_TEMPLATE", "assembly", "build_boot_sector", "build_disk", "PASS_COUNTER",
           "SIGNATURE_ADDR", "SIGNATURE", "LOW_LIMIT", "HIGH_LIMIT"]

PASS_COUNTER = 0x8000
SIGNATURE_ADDR = 0x8004
SIGNATURE = b"PGCD"
LOW_LIMIT = 0x10000
HIGH_LIMIT = 0x9F000
PAGE = 0x1000
DISK_SIZE = 64 * 1024

#: The boot sector (GNU as, AT&T syntax). ``{…}`` fields come from :class:`GuestPattern`.
ASM_TEMPLATE = """\
    .code16
    .text
    .globl _start
_start:
    cli
    xorw    %ax, %ax
    movw    %ax, %ds
    movw    %ax, %ss
    movw    $0x7c00, %sp
    cld
    movl    $0, {counter:#x}
    movl    ${signature:#x}, {signature_addr:#x}
    movw    ${first_seg:#x}, %bp
    sti

pass:
    incl    {counter:#x}
    movw    {counter:#x}, %si       /* the fill byte; read before invlpg (see below) */
    invlpg  {counter:#x}

    /* counter pages: bump one byte in each of `window` pages from the cursor (%bp, a segment),
       wrapping at the end, then drop the page's TLB entry */
    movw    %bp, %ax
    movw    ${window}, %dx
bump:
    movw    %ax, %es
    incb    %es:{offset:#x}
    invlpg  %es:{offset:#x}
    addw    ${stride_seg:#x}, %ax
    cmpw    ${end_seg:#x}, %ax
    jb      next
    movw    ${first_seg:#x}, %ax
next:
    decw    %dx
    jnz     bump
    movw    %ax, %bp

    /* fill pages: rewrite whole pages with the pass counter's low byte */
    movw    ${fill_pages}, %dx
    movw    ${fill_seg:#x}, %bx
fill:
    testw   %dx, %dx
    jz      wait
    movw    %bx, %es
    xorw    %di, %di
    movw    %si, %ax
    movw    ${fill_bytes:#x}, %cx
    rep stosb
    invlpg  %es:0
    addw    $0x100, %bx
    decw    %dx
    jmp     fill

    /* wait: timer ticks (the vCPU sleeps), then a busy loop */
wait:
    movw    ${wait_ticks}, %cx
    jcxz    spin
tick:
    hlt
    loop    tick
spin:
    movw    ${spin}, %dx
spin_outer:
    testw   %dx, %dx
    jz      pass
    xorw    %cx, %cx
spin_inner:
    loop    spin_inner
    decw    %dx
    jmp     spin_outer

    .org    510
    .word   0xaa55
"""


@dataclass(frozen=True)
class GuestPattern:
    """How the guest dirties memory (linear addresses, page aligned; see the module doc)."""

    first: int = 0x10000
    end: int = 0x90000
    stride: int = PAGE
    offset: int = 0
    fill_pages: int = 0
    fill_first: int = 0x90000
    fill_bytes: int = PAGE
    wait_ticks: int = 1
    spin: int = 0
    window: int | None = None

    def __post_init__(self) -> None:
        def page_range(name: str, lo: int, hi: int) -> None:
            if lo % PAGE or hi % PAGE or not (LOW_LIMIT <= lo <= hi <= HIGH_LIMIT):
                raise QemuError(f"guest pattern: {name} {lo:#x}…{hi:#x} must be page aligned within "
                                f"{LOW_LIMIT:#x}…{HIGH_LIMIT:#x}")

        page_range("counter pages", self.first, self.end)
        if self.end <= self.first:
            raise QemuError(f"guest pattern: no counter pages ({self.first:#x}…{self.end:#x})")
        if self.stride <= 0 or self.stride % PAGE:
            raise QemuError(f"guest pattern: stride {self.stride:#x} must be a positive multiple of {PAGE:#x}")
        if not 0 <= self.offset < PAGE:
            raise QemuError(f"guest pattern: offset {self.offset:#x} must be inside a page")
        page_range("fill pages", self.fill_first, self.fill_first + self.fill_pages * PAGE)
        if not 1 <= self.fill_bytes <= PAGE:
            raise QemuError(f"guest pattern: fill_bytes {self.fill_bytes} must be 1…{PAGE}")
        n = len(range(self.first, self.end, self.stride))
        if self.window is not None and not 1 <= self.window <= n:
            raise QemuError(f"guest pattern: window {self.window} must be 1…{n} (the counter pages)")
        for name in ("fill_pages", "wait_ticks", "spin"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFFFF:
                raise QemuError(f"guest pattern: {name} {v} out of range 0…65535")

    @property
    def counter_pages(self) -> list[int]:
        """Linear addresses of the pages whose byte at ``offset`` the guest bumps."""
        return list(range(self.first, self.end, self.stride))

    @property
    def pages_per_pass(self) -> int:
        """Counter pages bumped per pass: ``window``, or all of them (None)."""
        return self.window if self.window is not None else len(range(self.first, self.end, self.stride))

    def fields(self) -> dict[str, int]:
        return {
            "counter": PASS_COUNTER,
            "signature": struct.unpack("<I", SIGNATURE)[0],
            "signature_addr": SIGNATURE_ADDR,
            "first_seg": self.first >> 4,
            "end_seg": self.end >> 4,
            "stride_seg": self.stride >> 4,
            "offset": self.offset,
            "fill_pages": self.fill_pages,
            "fill_seg": self.fill_first >> 4,
            "fill_bytes": self.fill_bytes,
            "wait_ticks": self.wait_ticks,
            "spin": self.spin,
            "window": self.pages_per_pass,
        }


def assembly(pattern: GuestPattern) -> str:
    return ASM_TEMPLATE.format(**pattern.fields())


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise QemuError(f"binutils' {name!r} not found on PATH (apt-get install binutils)")
    return path


def build_boot_sector(pattern: GuestPattern = GuestPattern()) -> bytes:
    """Assemble and link the boot sector; returns its 512 bytes (signature 0xAA55 at 510)."""
    src = assembly(pattern)
    with tempfile.TemporaryDirectory(prefix="pagecodec-guest-") as d:
        dp = Path(d)
        (dp / "boot.S").write_text(src)
        for cmd in (
            [_tool("as"), "--32", "-o", str(dp / "boot.o"), str(dp / "boot.S")],
            [_tool("ld"), "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-e", "_start",
             "-o", str(dp / "boot.bin"), str(dp / "boot.o")],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                raise QemuError(f"building the guest boot sector: {Path(cmd[0]).name} failed "
                                f"(exit {proc.returncode}): {proc.stderr.strip()}")
        code = (dp / "boot.bin").read_bytes()
    if len(code) != 512 or code[510:] != b"\x55\xaa":
        raise QemuError(f"building the guest boot sector: got {len(code)} bytes, signature {code[510:512].hex()}"
                        " (expected 512 bytes ending 55aa)")
    return code


def build_disk(directory: str | Path, pattern: GuestPattern = GuestPattern(), size: int = DISK_SIZE) -> Path:
    """Write the raw disk image (boot sector + zero padding) into ``directory``; returns its path.

    The file name carries a hash of the assembly source, so differently patterned guests can share a directory.
    """
    if size < 512 or size % 512:
        raise QemuError(f"disk size {size} must be a positive multiple of 512")
    key = hashlib.sha256(assembly(pattern).encode()).hexdigest()[:12]
    path = Path(directory) / f"pagecodec-guest-{key}.img"
    if not path.exists():
        code = build_boot_sector(pattern)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(code + bytes(size - len(code)))
        tmp.replace(path)
    return path
