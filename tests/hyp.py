"""How many examples a property test runs: ``PAGECODEC_HYPOTHESIS_EXAMPLES`` when set, for every
hypothesis test alike, else the test's own bounded default (what CI runs).

The hypothesis profile ``pagecodec`` (registered and loaded in ``conftest.py``) carries the same
number for tests that name none; a test whose examples are expensive names its CI default here, as
``@settings(max_examples=examples(15))``, so that the variable still reaches it (a literal
``max_examples`` would override the profile: ``test_hypothesis_knob.py`` fails on one).
"""

from __future__ import annotations

import os

__all__ = ["ENV", "DEFAULT", "examples"]

ENV = "PAGECODEC_HYPOTHESIS_EXAMPLES"
#: Examples per property test that names no default of its own (hypothesis's own default).
DEFAULT = 100


def _from_env() -> int | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a positive integer") from None
    if n < 1:
        raise ValueError(f"{ENV}={raw!r}: expected a positive integer")
    return n


def examples(default: int = DEFAULT) -> int:
    """``PAGECODEC_HYPOTHESIS_EXAMPLES`` if set, else ``default``."""
    n = _from_env()
    return default if n is None else n
