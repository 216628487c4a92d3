"""TLS in both clients, client certificates, and the refusal to send a token in cleartext.

Certificates are made per run with the ``openssl`` command: a CA, a server certificate for
127.0.0.1 and localhost, and a client certificate signed by the same CA.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import Daemon, _run
from google.protobuf import wrappers_pb2

from larder_client import InsecureTokenError, Larder, aio
from larder_client._channel import is_local


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command (Debian: apt-get install openssl)")
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=d)  # fmt: skip
    # An unrelated CA, which must not be trusted for the server's certificate.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
             "-keyout", "other.key", "-out", "other.pem", cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tls_daemon(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A daemon with TLS on TCP and one bearer token."""
    token = "tls-test-token-4f1d2a9c0b7e6d5c3b2a1f0e"
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{token}\n")
    tokens.chmod(0o600)
    args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
    for d in _run([*args, "--auth-token-file", str(tokens)]):
        yield d, token


def test_both_clients_call_over_tls(certs: Path, tls_daemon: tuple[Daemon, str]) -> None:
    daemon, token = tls_daemon
    ca = (certs / "ca.pem").read_bytes()
    with Larder(daemon.addr, token=token, timeout=5.0, tls=True, root_certificates=ca) as larder:
        assert larder.cache.set("tls", b"sealed") is True
        assert larder.cache.get("tls") == b"sealed"

    async def over_aio() -> bytes | None:
        async with aio.Larder(
            daemon.addr, token=token, timeout=5.0, tls=True, root_certificates=ca
        ) as larder:
            return await larder.cache.get("tls")

    assert asyncio.run(over_aio()) == b"sealed"


def test_an_untrusted_server_certificate_is_refused(
    certs: Path, tls_daemon: tuple[Daemon, str]
) -> None:
    daemon, token = tls_daemon
    other = (certs / "other.pem").read_bytes()
    with Larder(daemon.addr, token=token, timeout=3.0, tls=True, root_certificates=other) as bad:
        with pytest.raises(grpc.RpcError) as err:
            bad.cache.get("tls")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_to_a_tls_port_fails(tls_daemon: tuple[Daemon, str]) -> None:
    daemon, token = tls_daemon
    with Larder(daemon.addr, token=token, timeout=3.0, retries=0) as plain:
        with pytest.raises(grpc.RpcError) as err:
            plain.cache.get("tls")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def _health_server(certs: Path) -> tuple[grpc.Server, int]:
    """A grpcio server that requires a client certificate and answers Health/Check SERVING."""

    def check(request: wrappers_pb2.StringValue, context: object) -> wrappers_pb2.Int32Value:
        return wrappers_pb2.Int32Value(value=1)

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.Int32Value.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [((certs / "server.key").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def test_a_client_certificate_is_presented_when_the_server_asks(certs: Path) -> None:
    # Larder's own listener does not ask for client certificates; a TLS-terminating proxy in
    # front of it may. A grpcio server that requires one stands in for that proxy here.
    server, port = _health_server(certs)
    try:
        ca = (certs / "ca.pem").read_bytes()
        with Larder(
            f"127.0.0.1:{port}",
            timeout=5.0,
            tls=True,
            root_certificates=ca,
            certificate_chain=(certs / "client.pem").read_bytes(),
            private_key=(certs / "client.key").read_bytes(),
        ) as larder:
            assert larder.health() is True
        with Larder(f"127.0.0.1:{port}", timeout=3.0, tls=True, root_certificates=ca) as anon:
            with pytest.raises(grpc.RpcError) as err:
                anon.health()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("client", [Larder, aio.Larder])
def test_a_token_is_never_sent_in_cleartext_off_this_machine(client: type) -> None:
    # The constructor refuses before any channel exists: nothing is sent anywhere.
    for target in ("db.example.com:7379", "10.1.2.3:7379", "[2001:db8::1]:7379"):
        with pytest.raises(InsecureTokenError, match="allow_insecure_token=True"):
            client(target, token="s3cret")


def test_allow_insecure_token_and_tls_lift_the_refusal() -> None:
    # Channels connect lazily: no call is made on these, so nothing is sent.
    Larder("10.1.2.3:7379", token="s3cret", allow_insecure_token=True).close()
    Larder("db.example.com:7379", token="s3cret", tls=True).close()
    Larder("db.example.com:7379").close()  # no token: nothing to protect


def test_local_targets_may_carry_a_token_in_cleartext() -> None:
    for target in (
        "127.0.0.1:7379",
        "127.8.9.10:1",
        "localhost:7379",
        "[::1]:7379",
        "unix:/run/larder/larder.sock",
        "dns:///localhost:7379",
        "ipv4:127.0.0.1:7379,127.0.0.2:7379",
    ):
        assert is_local(target), target
    for target in ("0.0.0.0:7379", "192.168.1.2:7379", "ipv4:127.0.0.1:1,10.0.0.1:1", "larder"):
        assert not is_local(target), target


def test_tls_options_are_checked() -> None:
    with pytest.raises(ValueError, match="tls=True"):
        Larder("127.0.0.1:7379", root_certificates=b"pem")
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        Larder("127.0.0.1:7379", tls=True, certificate_chain=b"pem")
