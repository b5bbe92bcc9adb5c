"""Shared fixtures: the reference data in ../shared (read-only) and small traces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the checkout (CI lays it there), or $PAGECODEC_SHARED."""
    env = os.environ.get("PAGECODEC_SHARED")
    return Path(env) if env else ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if not (d / "streams").is_dir():
        pytest.fail(f"reference data missing: {d}/streams (QEMU's own streams are required, not optional)")
    return d


@pytest.fixture(scope="session")
def pm():
    from pagecodec.plugins import PluginManager

    return PluginManager()


def write_trace(path, blocks, rounds, page_size=4096):
    """A trace from explicit content: ``blocks`` [(name, size)], ``rounds`` list of
    {block_index: (offsets, pages)} with round 0 the full image."""
    from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter

    meta = TraceMeta(page_size, tuple(RAMBlockInfo(n, s, page_size) for n, s in blocks), Provenance("test", "tests", "2026-01-01T00:00:00"))
    with TraceWriter(path, meta) as w:
        for r, content in enumerate(rounds):
            for bi in sorted(content):
                offs, pages = content[bi]
                w.write(r, bi, np.asarray(offs, dtype=np.int64), np.asarray(pages, dtype=np.uint8).reshape(-1, page_size))
    return meta
