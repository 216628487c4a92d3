"""Compression of ``LarderCache`` values (OPTIONS ``COMPRESSOR`` and ``COMPRESS_MIN_BYTES``).

Two formats, each recognised on read by its own header, so a reader needs no setting to know
whether or how a value was compressed:

- ``"zlib"`` (the default): a zlib stream, whose first two bytes are a valid zlib header
  (compression method 8, window at most 32 KiB, header checksum divisible by 31).
- ``"zstd"``: a Zstandard frame, starting with the magic bytes ``28 B5 2F FD``; made by
  Python 3.14's ``compression.zstd``, else by the ``zstandard`` package
  (``pip install zstandard``).
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


class ZlibCompressor:
    """zlib at its default level (6)."""

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return zlib.decompress(data)


class ZstdCompressor:
    """Zstandard at its default level (3), from ``compression.zstd`` or ``zstandard``."""

    def __init__(self) -> None:
        self._lib = _zstd()
        if self._lib is None:
            raise ModuleNotFoundError(
                "zstd needs Python 3.14's compression.zstd or the zstandard package "
                "(pip install zstandard)"
            )

    def compress(self, data: bytes) -> bytes:
        return self._lib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        return self._lib.decompress(data)


class _Zstandard:
    """The ``zstandard`` package behind the ``compress``/``decompress`` functions of
    ``compression.zstd``. Its one-shot compressor writes the content size into the frame,
    which its one-shot decompressor needs. Its (de)compressor objects must not be shared
    between threads, so each call makes its own (a few microseconds)."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def compress(self, data: bytes) -> bytes:
        return self._module.ZstdCompressor().compress(data)

    def decompress(self, data: bytes) -> bytes:
        return self._module.ZstdDecompressor().decompress(data)


@functools.cache
def _zstd() -> Any:
    """``compression.zstd`` (Python 3.14+), else a ``zstandard`` wrapper, else None; looked up
    once per process (a failed import is not cached by Python and costs a search of sys.path,
    which every read of a zstd value would otherwise repeat)."""
    try:
        from compression import zstd  # type: ignore[import-not-found]

        return zstd
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None
    return _Zstandard(zstandard)


def load_compressor(name: Any, setting: str) -> Compressor:
    """The compressor ``name`` ("zlib" or "zstd") names; ImproperlyConfigured naming
    ``setting`` otherwise, or when zstd is asked for and no zstd module is installed."""
    if name == "zlib":
        return ZlibCompressor()
    if name == "zstd":
        try:
            return ZstdCompressor()
        except ModuleNotFoundError as err:
            raise ImproperlyConfigured(f"{setting}: COMPRESSOR 'zstd': {err}") from err
    raise ImproperlyConfigured(f"{setting}: COMPRESSOR must be 'zlib' or 'zstd', not {name!r}")


def is_zlib(data: bytes) -> bool:
    """Whether ``data`` starts with a valid zlib header (RFC 1950)."""
    if len(data) < 2:
        return False
    cmf, flg = data[0], data[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


def decompressed(data: bytes) -> bytes | None:
    """The decompressed bytes when ``data`` is a zstd frame or a zlib stream, else None.

    A value whose header matches but does not decompress (serialized data that happens to
    look like a zlib header) also answers None: it is read as serialized data. A zstd frame
    without a zstd module installed raises ModuleNotFoundError saying what to install.
    """
    if data.startswith(ZSTD_MAGIC):
        lib = _zstd()
        if lib is None:
            raise ModuleNotFoundError(
                "a cached value is zstd-compressed: install the zstandard package (or use "
                "Python 3.14+) to read it"
            )
        try:
            return lib.decompress(data)
        except Exception:  # noqa: BLE001  (each zstd library raises its own error type)
            return None
    if is_zlib(data):
        try:
            return zlib.decompress(data)
        except zlib.error:
            return None
    return None
