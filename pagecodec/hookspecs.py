"""The hooks a pagecodec plugin implements (pluggy), documented like pytest's hookspec.py.

A plugin is a module (or object) with functions decorated ``@pagecodec.hookimpl``. Built-in codecs are
plugins of exactly this kind (``pagecodec.plugins.DEFAULT_PLUGINS``); a third-party package exposes its
module under the entry-point group ``pagecodec``::

    [project.entry-points.pagecodec]
    mycodec = "mycodec_plugin"

and ``pagecodec --plugin MODULE`` loads a module by name for one run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from .codecs.base import Codec

PROJECT = "pagecodec"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_codecs(register: "Callable[[Codec], None]") -> None:
    """Register the codecs this plugin provides.

    Call ``register(codec)`` once per :class:`pagecodec.codecs.base.Codec` instance. A codec names the
    chain slots it can fill (``Codec.slots``) and says whether its records are QEMU's wire format
    (``Codec.qemu_format``) or a pagecodec extension. Codec names are global: registering a name that
    another plugin already registered is an error.
    """


@hookspec
def register_presets(register: "Callable[[str, str, str], None]") -> None:
    """Register configuration presets: ``register(name, spec, description)``.

    ``spec`` uses the ``--config`` syntax (QEMU capability and parameter names, comma-separated), so
    that ``--config NAME`` expands to it.
    """
