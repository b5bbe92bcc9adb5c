"""pytest-benchmark settings for ``pytest bench/``: every benchmarking run is saved.

``pytest bench/ --benchmark-only`` (or plain ``pytest bench/``) writes its JSON under ``.benchmarks/``
as if ``--benchmark-autosave`` had been given, so the next run can be compared with
``--benchmark-compare`` (``--benchmark-compare-fail=min:10%`` to fail on a regression) and
``python bench/readme_table.py`` can regenerate README's table from it. An explicit
``--benchmark-json`` or ``--benchmark-disable`` is left as given.
"""

from __future__ import annotations


def pytest_configure(config):  # type: ignore[no-untyped-def]
    opt = config.option
    if not getattr(opt, "benchmark_disable", False) and not getattr(opt, "benchmark_json", None) \
            and not getattr(opt, "benchmark_autosave", None):
        from pytest_benchmark.utils import get_tag

        opt.benchmark_autosave = get_tag()  # what --benchmark-autosave stores: the commit (the file's name)
