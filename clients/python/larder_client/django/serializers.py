"""Serializers of ``LarderCache`` (OPTIONS ``SERIALIZER``): Python values to bytes and back.

``"pickle"`` (the default, as Django's own cache backends) stores any picklable value;
``"json"`` stores what ``DjangoJSONEncoder`` can write (dates, decimals and UUIDs come back as
strings) and reads it back as JSON types. A dotted path names any class whose instances have
``dumps(value) -> bytes`` and ``loads(bytes) -> value``; the class is called without arguments.

Plain ``int`` values never reach the serializer: the backend stores them as ASCII decimal so
that ``incr`` works on them (see ``larder_client.django.cache``). A custom serializer must not
produce output that is an ASCII decimal integer, nor output that starts with a zstd frame's
magic bytes or a valid zlib header, since a reader takes those for an int or for compressed
data (pickle's output starts with byte 0x80 and JSON's never is a bare integer, so neither
does; a zlib look-alike whose decompression fails is read as serialized data all the same).
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.module_loading import import_string


class Serializer(Protocol):
    """What ``SERIALIZER`` must provide."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    """``pickle`` at its highest protocol, as Django's Redis backend."""

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, self.protocol)

    def loads(self, data: bytes) -> Any:
        # Unpickling runs code: like Django's own backends, this trusts the cache's contents.
        return pickle.loads(data)


class JSONSerializer:
    """Compact UTF-8 JSON written with ``DjangoJSONEncoder``."""

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, cls=DjangoJSONEncoder, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


_BUILTIN: dict[str, type[PickleSerializer | JSONSerializer]] = {
    "pickle": PickleSerializer,
    "json": JSONSerializer,
}


def load_serializer(spec: Any, setting: str) -> Serializer:
    """The serializer ``spec`` names: "pickle", "json", a dotted path, a class or an instance.

    Raises ImproperlyConfigured naming ``setting`` when it cannot be found or lacks
    ``dumps``/``loads``.
    """
    target = spec
    if isinstance(spec, str):
        if spec in _BUILTIN:
            return _BUILTIN[spec]()
        try:
            target = import_string(spec)
        except ImportError as err:
            raise ImproperlyConfigured(
                f"{setting}: SERIALIZER {spec!r} is neither 'pickle', 'json' nor an importable "
                f"dotted path ({err})"
            ) from err
    if isinstance(target, type):
        target = target()
    if not (callable(getattr(target, "dumps", None)) and callable(getattr(target, "loads", None))):
        raise ImproperlyConfigured(
            f"{setting}: SERIALIZER {spec!r} must have dumps(value) -> bytes and "
            "loads(bytes) -> value"
        )
    return target
