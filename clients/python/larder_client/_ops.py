"""Operations written once for both clients: generators that yield the calls they need.

An adapter's operation (a Django cache ``incr``, a ``limits`` moving-window hit, ...) is a
generator that yields ``Rpc`` values, the calls it wants made on one of the client's sub-APIs,
receives each answer (or has the call's exception thrown in, so it can handle it) and returns
its result. ``run`` makes the calls on the blocking client's sub-API, ``arun`` awaits them on
the asyncio client's: the blocking and the asyncio clients have the same methods with the same
arguments, so the adapter's logic exists once.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Rpc:
    """One call of a sub-API (``cache``, ``sessions``, ...), by method name and arguments."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def rpc(method: str, *args: Any, **kwargs: Any) -> Rpc:
    return Rpc(method, args, kwargs)


Op = Generator[Rpc, Any, T]


def run(op: Op[T], api: Any, **defaults: Any) -> T:
    """Drives ``op`` on the blocking sub-API ``api``; ``defaults`` (e.g. the adapter's
    namespace) are keyword arguments of every call unless the call gives them itself."""
    try:
        call = next(op)
        while True:
            try:
                answer = getattr(api, call.method)(*call.args, **{**defaults, **call.kwargs})
            except Exception as err:  # noqa: BLE001  (thrown into the operation)
                call = op.throw(err)
            else:
                call = op.send(answer)
    except StopIteration as stop:
        return stop.value


async def arun(op: Op[T], api: Any, **defaults: Any) -> T:
    """``run`` on an asyncio sub-API: each call is awaited."""
    try:
        call = next(op)
        while True:
            try:
                answer = await getattr(api, call.method)(*call.args, **{**defaults, **call.kwargs})
            except Exception as err:  # noqa: BLE001  (thrown into the operation)
                call = op.throw(err)
            else:
                call = op.send(answer)
    except StopIteration as stop:
        return stop.value
