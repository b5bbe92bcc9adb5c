"""A pytest plugin (``-p pytest_examples`` in pyproject.toml): the example plugin packages' tests inside
the project's own test run (``testpaths``: tests and plugins). README's test command installs the
packages, so their tests (pagecodec's conformance kit) run with everything else. A package that is not
installed is left out, and the run's header says so; under CI=true it is collected anyway, so its
absence fails the run instead of passing unseen. (Not a conftest.py: the project's tests import their
own ``conftest`` module by that name.)"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from pagecodec.qemu.find import in_ci

HERE = Path(__file__).parent


def _packages() -> list[Path]:
    return sorted(p for p in HERE.iterdir() if (p / "pyproject.toml").exists() and (p / "tests").is_dir())


def _installed(package: Path) -> bool:
    try:
        metadata.distribution(package.name)  # the directory is named as its distribution
    except metadata.PackageNotFoundError:
        return False
    return True


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:  # noqa: ANN001
    p = Path(collection_path)
    if p.parent == HERE and p in _packages() and not _installed(p) and not in_ci():
        return True
    return None


def pytest_report_header(config) -> str | None:  # noqa: ANN001
    missing = [p.name for p in _packages() if not _installed(p)]
    if not missing:
        return None
    return (f"example plugins not installed, their tests {'fail (CI)' if in_ci() else 'left out'}: "
            f"{', '.join(missing)} (README's test command installs them)")
