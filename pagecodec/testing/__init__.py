"""pagecodec's conformance kit for codec plugins: one import and one call in the plugin's own tests.

With pytest (one test per check, each passing, failing with what went wrong, or skipped with why)::

    # tests/test_<codec>_conformance.py of a plugin package
    from pagecodec.testing import conformance_tests

    test_conformance = conformance_tests("mycodec", plugin="mycodec_plugin")

Without pytest, :func:`check_codec` runs every check and raises :class:`ConformanceError` listing the
failures. The checks (:data:`CHECKS`): the plugin registers the codec; ``pagecodec plugins`` lists it;
an installed entry point loads it; a trace of edge pages (zero, all-0xff, random, text, one byte
changed, first and last byte changed, unchanged rewrites, two blocks, a block longer than a segment,
an empty pass) arrives intact after every round; batches of 1 and 3 pages give the chain's bytes;
the same pages give the same bytes twice; a receiver in a fresh process decodes the stream; damaged
records raise DecodeError and leave their page as it was (a bounded fuzz of the decoder).
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable, Sequence

from .conformance import CHECKS, CheckResult, ConformanceError, Kit
from .pages import EdgeTrace, edge_pages, write_edge_trace

__all__ = ["CHECKS", "CheckResult", "ConformanceError", "Kit", "check_codec", "conformance_tests",
           "EdgeTrace", "edge_pages", "write_edge_trace"]


def check_codec(codec: str, plugin: str, *, configs: Sequence[str] = ("",), checks: Sequence[str] | None = None,
                **options: Any) -> list[CheckResult]:
    """Run the checks (all, or ``checks``) on codec ``codec`` of plugin module ``plugin``; returns the
    results, or raises ConformanceError naming every check that failed. ``configs`` and ``options``
    (``page_size``, ``fuzz_inputs``, ``fuzz_seconds``, ``seed``) as :class:`Kit` takes them."""
    kit = Kit(codec, plugin, configs=tuple(configs), **options)
    with tempfile.TemporaryDirectory(prefix="pagecodec-kit-") as d:
        results = kit.run_all(d, checks)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise ConformanceError(f"codec {codec!r} of plugin {plugin!r} fails {len(failed)} check(s):\n"
                               + "\n".join(f"  {r}" for r in failed))
    return results


def conformance_tests(codec: str, plugin: str, *, configs: Sequence[str] = ("",),
                      checks: Sequence[str] | None = None, **options: Any) -> Callable[..., None]:
    """A pytest test function parametrized over the checks; assign it to a ``test_*`` name in a test
    module. A failed check fails its test with what went wrong; a check that does not apply (no
    installed entry point, a codec without decoders of its own) is skipped, saying why."""
    import pytest

    kit = Kit(codec, plugin, configs=tuple(configs), **options)

    @pytest.mark.parametrize("check", list(checks or CHECKS))
    def test_conformance(check: str, tmp_path_factory: Any) -> None:
        workdir = tmp_path_factory.getbasetemp() / f"pagecodec-kit-{codec}"
        workdir.mkdir(exist_ok=True)  # one edge trace for all the checks
        result = kit.run(check, workdir)
        if result.status == "skipped":
            pytest.skip(result.detail)
        if result.status == "failed":
            pytest.fail(f"{check} ({CHECKS[check]}): {result.detail}", pytrace=False)

    test_conformance.__doc__ = f"pagecodec conformance of codec {codec!r} (plugin {plugin!r})"
    return test_conformance
