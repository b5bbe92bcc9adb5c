"""pagecodec: offline replay of QEMU's live-migration page encoders."""

__version__ = "0.1.0"
