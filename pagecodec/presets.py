"""Built-in configuration presets, registered through the same hook a plugin would use."""

from __future__ import annotations

from .hookspecs import hookimpl

#: name -> (spec, description); specs use QEMU's capability and parameter names.
BUILTIN_PRESETS: dict[str, tuple[str, str]] = {
    "none": ("", "no page capability: zero pages and raw pages only (QEMU's default)"),
    "xbzrle": ("xbzrle=on", "XBZRLE delta against the page cache (xbzrle-cache-size 64M)"),
    "compress": ("compress=on", "zlib compress threads (compress-threads 8, compress-level 1)"),
    "xbzrle+compress": ("xbzrle=on,compress=on", "compression in the bulk stage, XBZRLE afterwards"),
    "compress-isal": ("compress=on,compress-codec=compress-isal",
                      "compress threads deflating with ISA-L (zlib streams QEMU loads, less CPU)"),
    "compress-zlibng": ("compress=on,compress-codec=compress-zlibng",
                        "compress threads deflating with zlib-ng (zlib streams QEMU loads, less CPU)"),
    "zstd": ("compress=on,compress-codec=compress-zstd",
             "compress threads with one zstd frame per page (pc-zstd-level); pagecodec extension, QEMU cannot load it"),
    "lz4": ("compress=on,compress-codec=compress-lz4",
            "compress threads with one LZ4 block per page (pc-lz4-acceleration); pagecodec extension, QEMU cannot load it"),
    "lz4hc": ("compress=on,compress-codec=compress-lz4hc",
              "compress threads with one LZ4 HC block per page (pc-lz4hc-level); pagecodec extension, QEMU cannot load it"),
    "multifd": ("multifd=on", "multifd channels without compression"),
    "multifd-zlib": ("multifd=on,multifd-compression=zlib", "multifd channels with per-channel zlib"),
    "multifd-zstd": ("multifd=on,multifd-compression=zstd", "multifd channels with per-channel zstd"),
    # pagecodec's own codecs (extension records: not loadable by QEMU)
    "xor-zstd": ("delta-codec=xor-zstd", "pagecodec extension: XOR against the destination's cached copy, one zstd "
                 "stream in runs of 64 pages (xbzrle-cache-size, pc-zstd-level)"),
    "xor-zstd-long": ("delta-codec=xor-zstd,pc-zstd-long=24", "pagecodec extension: xor-zstd whose stream also "
                      "finds data sent up to 16 MiB earlier (zstd long-distance matching): copied or sorted data"),
    "xbzrle+zstd": ("delta-codec=xbzrle-zstd", "pagecodec extension: QEMU's XBZRLE with its page cache filled from "
                    "the bulk stage, zstd over its records and whole pages"),
    "delta-zstd": ("delta-codec=delta-zstd", "pagecodec extension: a zstd frame per page, patch-from the "
                   "destination's cached copy"),
}


@hookimpl
def register_presets(register) -> None:  # type: ignore[no-untyped-def]
    for name, (spec, description) in BUILTIN_PRESETS.items():
        register(name, spec, description)
