"""The QEVM file container (savevm.c): header, configuration, sections with footers, EOF, vmdesc.

A migration stream written with ``migrate "exec:cat > FILE"`` is one of these files. The writer emits
what QEMU 7.2's ``-incoming`` needs to load RAM (header, configuration naming the machine type, the
iterable "ram" section as START/PART.../END, EOF, the vmdesc trailer); the reader walks the same
structure with bounds checks, QEMU_VM_COMMAND sections included, and locates the VMDESCRIPTION trailer
from the end of a file (device sections are not length-prefixed, so that is how their end is found).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..limits import load_json
from .flags import QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, SectionType
from .reader import StreamReader
from .writer import WireWriter

__all__ = [
    "FileHeader",
    "SectionHeader",
    "write_file_header",
    "write_section_header",
    "write_section_footer",
    "write_eof",
    "write_vmdesc",
    "read_file_header",
    "read_section_header",
    "read_section_footer",
    "read_vmdesc",
    "read_command",
    "find_vmdesc",
    "stream_page_size",
    "MIG_CMD_NAMES",
    "VMDESC_SEARCH_BYTES",
    "MAX_MACHINE_NAME",
    "machine_name",
]

KIND = "section"  # byte-count category of container framing

#: QEMU_VM_COMMAND sub-commands (savevm.c ``enum qemu_vm_cmd``).
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_SWITCHOVER_START = 11
MIG_CMD_NAMES = {
    0: "INVALID", 1: "OPEN_RETURN_PATH", 2: "PING", 3: "POSTCOPY_ADVISE", 4: "POSTCOPY_LISTEN",
    5: "POSTCOPY_RUN", 6: "POSTCOPY_RAM_DISCARD", 7: "PACKAGED", 8: "ENABLE_COLO", 9: "POSTCOPY_RESUME",
    10: "RECV_BITMAP", 11: "SWITCHOVER_START",
}
#: How far from the end of the file the VMDESCRIPTION trailer is looked for (analyze-migration reads
#: the last 10 MB). A trailer is at most this long (a longer one could not be found this way anyway), and
#: its JSON nests at most :data:`pagecodec.limits.MAX_JSON_DEPTH` deep (QEMU's: 13).
VMDESC_SEARCH_BYTES = 16 << 20
#: Longest machine type name the reader takes in the configuration section (QEMU's are < 40 bytes).
MAX_MACHINE_NAME = 256


@dataclass
class FileHeader:
    """What precedes the first section: QEVM magic/version and the configuration section."""

    version: int
    machine: str | None
    target_page_bits: int | None = None
    capabilities: list[str] = field(default_factory=list)
    uuid: bytes | None = None


@dataclass
class SectionHeader:
    """A section's header as QEMU writes it (save_section_header)."""

    type: SectionType
    section_id: int
    idstr: str | None = None
    instance_id: int | None = None
    version_id: int | None = None
    offset: int = 0  # where the type byte sits in the stream


# --- writing -------------------------------------------------------------------------------------
def machine_name(machine: str) -> bytes:
    """The machine type as the configuration section carries it: printable ASCII, 1 … 256 bytes (what
    the reader, and QEMU's machine names, allow). ConfigError otherwise, before anything is written."""
    raw = machine.encode("ascii", "replace")
    if not 1 <= len(raw) <= MAX_MACHINE_NAME or not machine.isascii() or not machine.isprintable():
        raise ConfigError(f"machine type {machine[:64]!r}: must be 1 … {MAX_MACHINE_NAME} printable ASCII "
                          f"characters (e.g. pc-i440fx-7.2)")
    return raw


def write_file_header(w: WireWriter, machine: str) -> None:
    """QEVM magic, version 3, then the configuration section (vmstate_configuration: be32 len, name)."""
    name = machine_name(machine)
    w.put_be32(QEMU_VM_FILE_MAGIC, KIND)
    w.put_be32(QEMU_VM_FILE_VERSION, KIND)
    w.put_byte(SectionType.CONFIGURATION, KIND)
    w.put_be32(len(name), KIND)
    w.put(name, KIND)


def write_section_header(
    w: WireWriter,
    type_: SectionType,
    section_id: int,
    idstr: str | None = None,
    instance_id: int = 0,
    version_id: int = 0,
) -> None:
    """START/FULL carry idstr, instance and version; PART/END only the section id."""
    w.put_byte(type_, KIND)
    w.put_be32(section_id, KIND)
    if type_ in (SectionType.SECTION_START, SectionType.SECTION_FULL):
        assert idstr is not None
        raw = idstr.encode("ascii")
        w.put_byte(len(raw), KIND)
        w.put(raw, KIND)
        w.put_be32(instance_id, KIND)
        w.put_be32(version_id, KIND)


def write_section_footer(w: WireWriter, section_id: int) -> None:
    w.put_byte(SectionType.SECTION_FOOTER, KIND)
    w.put_be32(section_id, KIND)


def write_eof(w: WireWriter) -> None:
    w.put_byte(SectionType.EOF, KIND)


def write_vmdesc(w: WireWriter, page_size: int, devices: list[dict] | None = None) -> None:
    """The trailing VMDESCRIPTION JSON that QEMU appends after EOF (analyze-migration reads it)."""
    body = json.dumps({"page_size": page_size, "devices": devices or []}).encode()
    w.put_byte(SectionType.VMDESCRIPTION, "vmdesc")
    w.put_be32(len(body), "vmdesc")
    w.put(body, "vmdesc")


# --- reading -------------------------------------------------------------------------------------
_KNOWN_SUBSECTIONS = ("configuration/target-page-bits", "configuration/capabilities", "configuration/uuid")


def read_file_header(r: StreamReader) -> FileHeader:
    """Magic, version, and the configuration section with its known subsections."""
    magic = r.get_be32("file magic")
    if magic != QEMU_VM_FILE_MAGIC:
        raise r.error(f"not a QEMU migration stream: magic {magic:#010x}, expected {QEMU_VM_FILE_MAGIC:#010x}", 0)
    version = r.get_be32("file version")
    if version == 2:
        raise r.error("QEVM version 2 streams (QEMU before 1.3) are not supported", 4)
    if version != QEMU_VM_FILE_VERSION:
        raise r.error(f"unknown QEVM file version {version}", 4)
    hdr = FileHeader(version=version, machine=None)
    if r.peek_byte() != SectionType.CONFIGURATION:
        return hdr  # QEMU without send-configuration (4.x with old machine types)
    r.get_byte()
    n = r.get_be32("configuration length")
    if n > MAX_MACHINE_NAME:
        raise r.error(f"machine name of {n} bytes is implausible", r.pos - 4)
    hdr.machine = bytes(r.get_bytes(n, "machine name")).decode("ascii", "replace")
    while r.peek_byte() == SectionType.SUBSECTION:
        at = r.pos
        r.get_byte()
        name = r.get_counted_string("subsection name")
        r.get_be32("subsection version")
        if name == "configuration/target-page-bits":
            hdr.target_page_bits = r.get_be32("target-page-bits")
        elif name == "configuration/capabilities":
            count = r.get_be32("capability count")
            hdr.capabilities = [r.get_counted_string("capability") for _ in range(count)]
        elif name == "configuration/uuid":
            hdr.uuid = bytes(r.get_bytes(16, "uuid"))
        else:
            raise r.error(f"unknown configuration subsection {name!r} (known: {', '.join(_KNOWN_SUBSECTIONS)})", at)
    return hdr


def read_section_header(r: StreamReader) -> SectionHeader:
    """The next section's header; for EOF only ``type`` is set."""
    at = r.pos
    t = r.get_byte("section type")
    try:
        st = SectionType(t)
    except ValueError:
        raise r.error(f"unknown section type {t:#04x}", at) from None
    if st in (SectionType.EOF, SectionType.VMDESCRIPTION):
        return SectionHeader(st, -1, offset=at)
    if st not in (SectionType.SECTION_START, SectionType.SECTION_FULL, SectionType.SECTION_PART, SectionType.SECTION_END):
        raise r.error(f"unexpected section type {st.name} ({t:#04x})", at)
    sid = r.get_be32("section id")
    if st in (SectionType.SECTION_START, SectionType.SECTION_FULL):
        idstr = r.get_counted_string("section idstr")
        inst = r.get_be32("instance id")
        ver = r.get_be32("version id")
        return SectionHeader(st, sid, idstr, inst, ver, offset=at)
    return SectionHeader(st, sid, offset=at)


def read_section_footer(r: StreamReader, section_id: int) -> None:
    """QEMU's check_section_footer: 0x7E then the same section id."""
    at = r.pos
    t = r.get_byte("section footer")
    if t != SectionType.SECTION_FOOTER:
        raise r.error(f"missing section footer for section {section_id}: got byte {t:#04x}", at)
    sid = r.get_be32("footer section id")
    if sid != section_id:
        raise r.error(f"section footer names section {sid}, expected {section_id}", at)


def read_vmdesc(r: StreamReader) -> dict:
    """Body of a VMDESCRIPTION section (type byte already consumed): JSON of at most
    :data:`VMDESC_SEARCH_BYTES`, parsed with bounded depth (WireError otherwise)."""
    n = r.get_be32("vmdesc length")
    at = r.pos
    if n > VMDESC_SEARCH_BYTES:
        raise r.error(f"vmdesc of {n} bytes, more than the {VMDESC_SEARCH_BYTES} a trailer may have", at - 4)
    raw = bytes(r.get_bytes(n, "vmdesc JSON"))
    try:
        return load_json(raw)
    except ValueError as e:  # malformed, too deep (JsonLimitError), not UTF-8 (UnicodeDecodeError)
        raise r.error(f"vmdesc is not valid JSON: {e}", at) from None


def read_command(r: StreamReader) -> tuple[int, bytes]:
    """A QEMU_VM_COMMAND section (qemu_savevm_command_send): type byte, be16 command, be16 length, data."""
    at = r.pos
    t = r.get_byte("section type")
    if t != SectionType.COMMAND:
        raise r.error(f"expected a QEMU_VM_COMMAND section, got type {t:#04x}", at)
    cmd = r.get_be16("command")
    n = r.get_be16("command length")
    return cmd, bytes(r.get_bytes(n, "command data"))


def find_vmdesc(buf: np.ndarray, search: int = VMDESC_SEARCH_BYTES) -> tuple[int, dict] | None:
    """Locate the trailer ``0x00 (EOF), 0x06, be32 len, JSON`` ending exactly at the end of ``buf``.

    Returns (offset of the 0x06 byte, parsed JSON) or None. JSON text holds no 0x06 byte and the
    length must reach the end of the file exactly, so at most one candidate fits.
    """
    n = len(buf)
    if n < 7:
        return None
    lo = max(1, n - search)
    cand = np.flatnonzero(buf[lo : n - 5] == SectionType.VMDESCRIPTION) + lo
    if not len(cand):
        return None
    b = buf
    lens = (
        (b[cand + 1].astype(np.int64) << 24) | (b[cand + 2].astype(np.int64) << 16)
        | (b[cand + 3].astype(np.int64) << 8) | b[cand + 4].astype(np.int64)
    )
    ok = (lens == n - cand - 5) & (b[cand + 5] == ord("{")) & (b[cand - 1] == SectionType.EOF)
    ok &= cand >= cand[-1] - 4  # no 0x06 in the JSON: only the last 0x06 (or one in the length) can start it
    for c in cand[ok][::-1].tolist():
        try:
            desc = load_json(bytes(buf[c + 5 : n]))  # bounded depth: nested JSON is no trailer
        except ValueError:
            continue
        if isinstance(desc, dict):
            return c, desc
    return None


def stream_page_size(r: StreamReader, hdr: FileHeader, trailer: tuple[int, dict] | None) -> int:
    """The stream's target page size: target-page-bits if the configuration has it, else the vmdesc's
    page_size (``trailer`` as :func:`find_vmdesc` returns it), else 4096."""
    ps = 4096
    if hdr.target_page_bits is not None:
        if not 9 <= hdr.target_page_bits <= 16:
            raise r.error(f"implausible target-page-bits {hdr.target_page_bits}", 0)
        ps = 1 << hdr.target_page_bits
    if trailer is not None:
        vps = trailer[1].get("page_size")
        if isinstance(vps, int) and not isinstance(vps, bool):
            if hdr.target_page_bits is not None and vps != ps:
                raise r.error(f"vmdesc page_size {vps} disagrees with target-page-bits {hdr.target_page_bits}", trailer[0])
            if vps < 512 or vps > 65536 or vps & (vps - 1):
                raise r.error(f"implausible vmdesc page_size {vps}", trailer[0])
            ps = vps
    return ps
