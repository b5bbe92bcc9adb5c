"""Every way a trace is made, one module or package each.

* :mod:`.synth` — the synthetic generator (``pagecodec trace synth``);
* :mod:`.qemu_stream` — import of a QEMU migration stream file, single (QEVM) or a multifd capture
  (main stream + channel files), and the reverse split for tests;
* :mod:`.qemu_live` — capture from a running QEMU over QMP (to a file, or multifd over loopback);
* :mod:`.process` — capture from a live Linux process.

Sources sit above the chain: a source that reads QEMU's streams parses them with the destination's
:class:`~pagecodec.chain.receiver.Receiver`, so QEMU's load rules exist once. The trace format
(:mod:`pagecodec.trace`) depends on none of them.
"""
