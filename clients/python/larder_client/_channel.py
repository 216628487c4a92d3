"""The transport both clients open: plaintext or TLS, and where a token may go in cleartext.

A bearer token sent without TLS can be read by anyone on the path. Loopback addresses and Unix
sockets never leave the machine, so plaintext is fine there; for any other host the client
refuses to start unless it uses TLS or the caller says ``allow_insecure_token=True`` (for a
private network they trust, say).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from ._invoke import channel_options


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
        return cls(
            target,
            tuple(channel_options(target, options)),
            tls,
            root_certificates,
            private_key,
            certificate_chain,
        )

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
