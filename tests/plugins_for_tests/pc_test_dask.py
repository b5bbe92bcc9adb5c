"""Test plugin for the Dask executor: raw-slot codecs that take their time or kill their process, so
a test can catch a worker in the middle of a task (``slow``) or lose every worker that runs one
(``killer``). Their records are QEMU's own PAGE records, decoded by the built-in raw decoder.

``slow`` sleeps ``PCTEST_SLOW_S`` seconds (default 1) once per migration; the variable is read where
the task runs, so a test sets it for a worker by setting it before the cluster starts."""

from __future__ import annotations

import os
import signal
import time

from pagecodec.codecs.base import Codec, CodecContext, Slot, SlotEncoder
from pagecodec.codecs.raw import RawPageEncoder
from pagecodec.hookspecs import hookimpl


class SlowRawCodec(Codec):
    name = "slow"
    slots = (Slot.RAW,)
    qemu_format = True
    description = "raw pages, after a sleep (test plugin)"

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        time.sleep(float(os.environ.get("PCTEST_SLOW_S", "1")))
        return RawPageEncoder()


class KillerCodec(Codec):
    name = "killer"
    slots = (Slot.RAW,)
    qemu_format = True
    description = "kills the process that runs it (test plugin: only ever on a Dask worker)"

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


@hookimpl
def register_codecs(register):
    register(SlowRawCodec())
    register(KillerCodec())
