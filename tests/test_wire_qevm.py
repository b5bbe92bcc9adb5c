"""The QEVM container's reading side, field by field: what it accepts, what it refuses and the byte
offset each refusal names (mutation testing found these unpinned: mutation/run.py)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pagecodec.errors import ConfigError, WireError
from pagecodec.wire import qevm
from pagecodec.wire.reader import StreamReader

HEAD = struct.pack(">II", 0x5145564D, 3)


def config(machine: bytes = b"pc-i440fx-7.2", subsections: bytes = b"") -> bytes:
    return HEAD + struct.pack(">BI", 0x07, len(machine)) + machine + subsections


def sub(name: bytes, body: bytes, version: int = 1) -> bytes:
    return struct.pack(">BB", 0x05, len(name)) + name + struct.pack(">I", version) + body


def test_command_names_are_qemus_enum():
    """savevm.c's enum qemu_vm_cmd, in order (names only label QEMU_VM_COMMAND sections in messages)."""
    names = ["INVALID", "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_RUN",
             "POSTCOPY_RAM_DISCARD", "PACKAGED", "ENABLE_COLO", "POSTCOPY_RESUME", "RECV_BITMAP", "SWITCHOVER_START"]
    assert qevm.MIG_CMD_NAMES == dict(enumerate(names))


@pytest.mark.parametrize("name", ["", "pc\n", "pc-é", "x" * 257])
def test_machine_names_the_configuration_cannot_carry(name):
    with pytest.raises(ConfigError, match="printable ASCII"):
        qevm.machine_name(name)
    assert qevm.machine_name("x" * 256) == b"x" * 256 and qevm.machine_name("q") == b"q"


def test_configuration_subsections():
    uuid = bytes(range(16))
    caps = struct.pack(">I", 2) + b"\x06xbzrle" + b"\x05multi"
    data = config(subsections=sub(b"configuration/target-page-bits", struct.pack(">I", 12))
                  + sub(b"configuration/capabilities", caps) + sub(b"configuration/uuid", uuid))
    hdr = qevm.read_file_header(StreamReader(data + b"\x00"))
    assert (hdr.machine, hdr.target_page_bits, hdr.capabilities, hdr.uuid) == ("pc-i440fx-7.2", 12, ["xbzrle", "multi"], uuid)
    bad = config(subsections=sub(b"configuration/unknown", b""))
    with pytest.raises(WireError, match="unknown configuration subsection 'configuration/unknown'") as ei:
        qevm.read_file_header(StreamReader(bad))
    assert ei.value.offset == len(config())


def test_header_refusals_name_their_offsets():
    with pytest.raises(WireError, match="version 2") as ei:
        qevm.read_file_header(StreamReader(struct.pack(">II", 0x5145564D, 2)))
    assert ei.value.offset == 4
    with pytest.raises(WireError, match="machine name of 257 bytes") as ei:
        qevm.read_file_header(StreamReader(HEAD + struct.pack(">BI", 0x07, 257)))
    assert ei.value.offset == 9  # the be32 length, after magic, version and the section type


def test_eof_header_has_no_section_id():
    h = qevm.read_section_header(StreamReader(b"\x00"))
    assert h.type == qevm.SectionType.EOF and h.section_id == -1 and h.offset == 0


def _page_size(vps, bits=None):
    subs = sub(b"configuration/target-page-bits", struct.pack(">I", bits)) if bits is not None else b""
    data = config(subsections=subs)
    r = StreamReader(data)
    hdr = qevm.read_file_header(r)
    return qevm.stream_page_size(r, hdr, (1234, {"page_size": vps}) if vps is not None else None)


@pytest.mark.parametrize("vps", [512, 4096, 65536])
def test_vmdesc_page_sizes_accepted(vps):
    assert _page_size(vps) == vps
    assert _page_size(vps, vps.bit_length() - 1) == vps


@pytest.mark.parametrize("vps", [256, 131072, 3000, 0])
def test_vmdesc_page_sizes_refused_at_the_trailer(vps):
    with pytest.raises(WireError, match="implausible vmdesc page_size") as ei:
        _page_size(vps)
    assert ei.value.offset == 1234


def test_vmdesc_page_size_must_agree_with_target_page_bits():
    with pytest.raises(WireError, match="disagrees with target-page-bits 12") as ei:
        _page_size(8192, 12)
    assert ei.value.offset == 1234
    assert _page_size(None, 13) == 8192 and _page_size(None) == 4096


def test_find_vmdesc_needs_the_trailer_at_the_very_end():
    body = b'{"page_size": 4096}'
    tail = b"\x00\x06" + struct.pack(">I", len(body)) + body
    buf = np.frombuffer(b"\x11" * 5 + tail, np.uint8)
    at, desc = qevm.find_vmdesc(buf)
    assert at == 6 and desc == {"page_size": 4096}
    assert qevm.find_vmdesc(np.frombuffer(b"\x00\x06\x00\x00\x00", np.uint8)) is None
    assert qevm.find_vmdesc(np.frombuffer(tail + b"\x00", np.uint8)) is None
