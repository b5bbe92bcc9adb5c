"""A deliberately broken plugin for tests: it fails to import, as a third-party package whose own
dependency is missing would. pagecodec must name it, leave it out, and run everything that does not
need it (``bench`` marks the configs that do failed and finishes the others)."""

from __future__ import annotations

import pagecodec_test_dependency_that_is_not_installed  # noqa: F401

from pagecodec.hookspecs import hookimpl


@hookimpl
def register_codecs(register):  # never reached
    raise AssertionError("unreachable")
