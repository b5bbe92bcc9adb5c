"""One exception tree for everything pagecodec reports as bad input.

Every error carries enough context (file, byte offset, round, block, page or plugin) for the user to
find the fault without a traceback; the CLI prints ``str(error)`` on one line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "PageCodecError",
    "TraceError",
    "WireError",
    "DecodeError",
    "PluginError",
    "ConfigError",
    "VerifyError",
    "OutputError",
    "one_line",
]


def one_line(text: str) -> str:
    """A message as one line (a library's own message, Arrow's or click's, may span several): errors
    are printed one per line, so every message pagecodec makes from another's goes through this."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "(no message)"


class PageCodecError(Exception):
    """Base of all errors pagecodec raises on purpose."""


class TraceError(PageCodecError):
    """A trace file is malformed, truncated or inconsistent (names the file and the row)."""


class WireError(PageCodecError):
    """A migration stream is malformed or truncated (names the byte offset)."""

    def __init__(self, message: str, offset: int | None = None, source: str | None = None):
        self.message = message
        self.offset = offset
        self.source = source
        where = []
        if source:
            where.append(str(source))
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


    def within(self, before: str = "", after: str = "") -> "WireError":
        """The same error (same class, offset and source) with more context around its message: the
        round a record belongs to, its block and page."""
        return type(self)(f"{before}{self.message}{after}", self.offset, self.source)


class DecodeError(WireError):
    """A page record's payload cannot be decoded (e.g. a malformed XBZRLE record)."""


class PluginError(PageCodecError):
    """A plugin failed to load, registered something invalid, or raised while encoding/decoding."""


class ConfigError(PageCodecError):
    """A migration configuration (capabilities/parameters) is invalid or not supported."""


class OutputError(PageCodecError):
    """A result, stream or trace cannot be written where it was asked for (no such directory, a
    directory in the way, no permission, a read-only or full file system): names the path. Nothing
    is left behind (no temporary file, no directory created)."""


class VerifyError(PageCodecError):
    """The destination's memory differs from the trace (round, block and offset named)."""
