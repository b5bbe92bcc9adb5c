"""bench/readme_table.py: README's benchmark table made from a saved pytest-benchmark run."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("readme_table", ROOT / "bench" / "readme_table.py")
readme_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_table)


def _run():
    def bench(group, name, median, info):
        return {"group": group, "name": name, "extra_info": info,
                "stats": {"min": median * 0.9, "median": median}}
    return {"commit_info": {"id": "abcdef0123456789", "dirty": False}, "datetime": "2026-11-30T00:00:00",
            "machine_info": {"cpu": {"brand_raw": "Some CPU", "count": 2}, "python_version": "3.11.7"},
            "benchmarks": [bench("zero", "C ref", 2e-4, {"GB/s": 177.0}), bench("zero", "pagecodec", 3e-4, {"GB/s": 124.4}),
                           bench("xbzrle", "decode", 1.5e-6, {"pages": 256})]}


def test_table_ranks_each_group_against_its_fastest():
    text = readme_table.table(_run())
    assert "commit abcdef012345 on 2026-11-30T00:00, Some CPU, 2 CPUs" in text
    assert "| zero | C ref | 180 µs | 200 µs | GB/s 177 | 1.00 |" in text
    assert "| zero | pagecodec | 270 µs | 300 µs | GB/s 124 | 1.50 |" in text
    assert "| xbzrle | decode | 1.35 µs | 1.5 µs | pages 256 | 1.00 |" in text


def test_update_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.START}\nold\n{readme_table.END}\nrest\n")
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(_run()))
    readme_table.update(readme, readme_table.table(json.loads(saved.read_text())))
    doc = readme.read_text()
    assert doc.startswith("intro\n") and doc.endswith("rest\n") and "old" not in doc and "| zero | C ref |" in doc
