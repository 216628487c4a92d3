"""The transport both clients open: plaintext or TLS, where a token may go in cleartext, and
which core carries the calls.

A bearer token sent without TLS can be read by anyone on the path. Loopback addresses and Unix
sockets never leave the machine, so plaintext is fine there; for any other host the client
refuses to start unless it uses TLS or the caller says ``allow_insecure_token=True`` (for a
private network they trust, say).

Two cores can carry the calls (``core=``, default ``LARDER_CLIENT_CORE`` or ``"auto"``):
``"native"``, the Rust extension ``larder_client._native`` (see ``_nativecore``), and
``"grpc"``, grpcio. ``"auto"`` takes the native core when it is installed and can carry the
connection as asked (its target kinds and the channel options in ``NATIVE_OPTIONS``), and
grpcio otherwise. Each core is reached through a binding: ``method`` gives the callable of one
RPC (what the ``Invoker`` calls), ``request`` what that callable takes for a ``Call``,
``ready`` waits for the daemon after an UNAVAILABLE, ``close`` closes the channel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from . import _nativecore
from ._calls import Call
from ._invoke import channel_options

CORES = ("auto", "native", "grpc")

# The channel options the native core carries out (authority and TLS name) or has no need
# of (it receives answers of any size and reconnects at once); any other is grpcio's alone.
NATIVE_OPTIONS = frozenset(
    {
        "grpc.default_authority",
        "grpc.ssl_target_name_override",
        "grpc.max_receive_message_length",
        "grpc.max_send_message_length",
        "grpc.initial_reconnect_backoff_ms",
        "grpc.max_reconnect_backoff_ms",
    }
)


class InsecureTokenError(ValueError):
    """A token would be sent in cleartext to a host that is not on this machine."""


@dataclass(frozen=True)
class Transport:
    """Where and how to connect; checked when made (see ``Transport.make``)."""

    target: str
    options: tuple[tuple[str, object], ...]
    tls: bool
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None
    # The native core, when it carries the calls (see ``make``); None for grpcio.
    native: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def make(
        cls,
        target: str,
        token: str | None,
        options: Sequence[tuple[str, object]],
        *,
        tls: bool,
        root_certificates: bytes | None,
        private_key: bytes | None,
        certificate_chain: bytes | None,
        allow_insecure_token: bool,
        core: str | None = None,
    ) -> Transport:
        if not tls and (root_certificates or private_key or certificate_chain):
            raise ValueError(
                "root_certificates, private_key and certificate_chain are TLS settings: "
                "pass tls=True with them"
            )
        if (private_key is None) != (certificate_chain is None):
            raise ValueError(
                "a client certificate needs both certificate_chain and private_key (PEM)"
            )
        if target.startswith("unix:") and tls:
            raise ValueError("tls=True over a Unix socket is not supported; use a TCP target")
        if token and not tls and not allow_insecure_token and not is_local(target):
            raise InsecureTokenError(
                f"refusing to send the token in cleartext to {target!r}, which is not a "
                "loopback address or a Unix socket: pass tls=True (the daemon's [tls] "
                "section), or allow_insecure_token=True if the network to it is trusted"
            )
        wanted = core if core is not None else os.environ.get("LARDER_CLIENT_CORE") or "auto"
        if wanted not in CORES:
            raise ValueError(f"core must be one of {', '.join(CORES)}, not {wanted!r}")
        native = None
        if wanted != "grpc":
            named = dict(options)
            grpc_only = sorted(set(named) - NATIVE_OPTIONS)
            try:
                if grpc_only:
                    raise ValueError(f"channel options {grpc_only} are grpcio's own")
                native = _nativecore.open_core(
                    target,
                    token,
                    tls=tls,
                    root_certificates=root_certificates,
                    certificate_chain=certificate_chain,
                    private_key=private_key,
                    authority=_text(named.get("grpc.default_authority")),
                    server_name=_text(named.get("grpc.ssl_target_name_override")),
                )
            except ValueError as err:
                if wanted == "native":
                    raise ValueError(f"core='native' cannot carry this connection: {err}") from err
        return cls(
            target,
            tuple(channel_options(target, options)),
            tls,
            root_certificates,
            private_key,
            certificate_chain,
            native,
        )

    @property
    def core(self) -> str:
        """``"native"`` or ``"grpc"``: which core carries this transport's calls."""
        return "grpc" if self.native is None else "native"

    def binding(self) -> GrpcBinding | _nativecore.NativeBinding:
        """The blocking client's binding (``larder_client.Larder``)."""
        if self.native is not None:
            return _nativecore.NativeBinding(self.native)
        return GrpcBinding(self.channel())

    def aio_binding(
        self, pipeline: bool = False
    ) -> AsyncGrpcBinding | _nativecore.AsyncNativeBinding:
        """The asyncio client's binding (``larder_client.aio.Larder``). With ``pipeline``, the
        native core sends its calls on one ``PipelineService/Run`` stream; grpcio makes each
        call unary either way (multiplexing in Python over a grpc.aio stream cost more client
        and daemon CPU per call than it saved: see docs/clients.md)."""
        if self.native is not None:
            return _nativecore.AsyncNativeBinding(self.native, pipeline)
        return AsyncGrpcBinding(self.aio_channel())

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel(self) -> grpc.Channel:
        """A blocking channel (``larder_client.Larder``)."""
        if self.tls:
            return grpc.secure_channel(self.target, self._credentials(), list(self.options))
        return grpc.insecure_channel(self.target, list(self.options))

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel (``larder_client.aio.Larder``), bound to the running loop."""
        if self.tls:
            return grpc.aio.secure_channel(self.target, self._credentials(), list(self.options))
        return grpc.aio.insecure_channel(self.target, list(self.options))


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class _Stubs:
    """grpcio's generated stubs on one channel, made once per service."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._stubs: dict[str, Any] = {}

    @staticmethod
    def request(call: Call[Any]) -> Any:
        return call.request(**call.fields)

    def method(self, service: str, stub: type, name: str) -> Callable[..., Any]:
        made = self._stubs.get(service)
        if made is None:
            made = self._stubs[service] = stub(self.channel)
        return getattr(made, name)


class GrpcBinding(_Stubs):
    """Runs the blocking client's calls on a grpcio channel."""

    kind = "grpc"

    def ready(self, seconds: float) -> bool:
        """Whether the channel is connected, or connects within ``seconds``."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=seconds)
        except grpc.FutureTimeoutError:
            # Unsubscribes it from the channel's connectivity: a future left waiting would stay
            # subscribed until the channel connects, one more for every call while it is down.
            ready.cancel()
            return False
        return True

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcBinding(_Stubs):
    """Runs the asyncio client's calls on a ``grpc.aio`` channel."""

    kind = "grpc"

    async def ready(self, seconds: float) -> bool:
        """Whether the channel is connected, or connects within ``seconds``."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self.channel.close()


def is_local(target: str) -> bool:
    """Whether ``target`` stays on this machine: a Unix socket, ``localhost`` or a loopback IP.

    Understands ``host:port``, ``[v6]:port``, a bare host, and gRPC's ``dns:``, ``ipv4:`` and
    ``ipv6:`` schemes (one address; a list counts as local only if every address is).
    """
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    rest = target
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
            break
    if rest.startswith("//"):  # dns://authority/host:port
        rest = rest[2:].split("/", 1)[-1]
    hosts = [_host(part) for part in rest.split(",")]
    return bool(hosts) and all(_is_loopback(h) for h in hosts)


def _host(hostport: str) -> str:
    hostport = hostport.strip()
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    if hostport.count(":") > 1:  # a bare IPv6 address
        return hostport
    return hostport.rsplit(":", 1)[0] if ":" in hostport else hostport


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
