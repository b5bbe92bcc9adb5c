"""Where the wire's bytes go: the stream directory of a multifd run and its files, written atomically
(mutation testing found these unpinned by the fast tests: mutation/run.py)."""

from __future__ import annotations

import os
import stat

import pytest

from pagecodec.atomic import umask
from pagecodec.errors import OutputError
from pagecodec.wire.writer import FileSink, MemorySink, StreamDirectory, WireWriter


def test_stream_directory_commits_its_files(tmp_path):
    out = tmp_path / "cap"
    d = StreamDirectory(out)
    main, ch = d.main(), d.channel(1)
    main.write(b"QEVM")
    ch.write(bytearray(b"\x11\x22"))
    assert d.tmp is not None and d.tmp.parent == tmp_path  # beside the target: the rename stays on one file system
    d.commit()
    assert (out / "main.mig").read_bytes() == b"QEVM" and (out / "channel-1.bin").read_bytes() == b"\x11\x22"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask()
    assert [p.name for p in tmp_path.iterdir()] == ["cap"]


def test_stream_directory_replaces_an_empty_directory(tmp_path):
    out = tmp_path / "cap"
    out.mkdir()
    d = StreamDirectory(out)
    d.main().write(b"x")
    d.commit()
    assert (out / "main.mig").read_bytes() == b"x"


def test_stream_directory_made_in_the_working_directory_for_a_bare_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = StreamDirectory("cap")
    d.main().write(b"y")
    assert d.tmp is not None and d.tmp.parent.resolve() == tmp_path.resolve()
    d.commit()
    assert (tmp_path / "cap" / "main.mig").read_bytes() == b"y"


def test_stream_directory_abort_leaves_nothing(tmp_path):
    d = StreamDirectory(tmp_path / "cap")
    d.main().write(b"partial")
    d.channel(0).write(b"partial")
    d.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_is_an_output_error(tmp_path):
    d = StreamDirectory(tmp_path / "cap")
    sink = d.main()
    sink.write(b"a")

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    sink._f = Full()
    with pytest.raises(OutputError, match="No space left"):
        sink.write(b"b")
    d.abort()


def test_file_sink_and_writer_count_by_kind(tmp_path):
    path = tmp_path / "s.mig"
    w = WireWriter(FileSink(path))
    w.put(b"ab", "section")
    w.put(memoryview(b"cde"), "page")
    w.put_be32(7, "section")
    w.put(b"", "page")
    w.close()
    assert path.read_bytes() == b"abcde\x00\x00\x00\x07"
    assert dict(w.bytes_by_kind) == {"section": 6, "page": 3} and w.position == 9
    m = MemorySink()
    m.write(b"12")
    assert m.take() == b"12" and m.getvalue() == b""


def test_a_stream_file_that_cannot_be_opened_is_an_output_error(tmp_path):
    d = StreamDirectory(tmp_path / "cap")
    d.make().rmdir()  # the temporary directory vanished under the run
    with pytest.raises(OutputError):
        d.main().write(b"x")
    d.abort()


def test_file_sink_abort_before_and_after_writing(tmp_path):
    FileSink(tmp_path / "a.mig").abort()  # nothing written: nothing to close
    s = FileSink(tmp_path / "b.mig")
    s.write(b"partial")
    s.abort()
    assert list(tmp_path.iterdir()) == []
