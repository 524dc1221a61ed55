"""Certificates and factory keys: valid, trusted over a real TLS handshake, private, never overwritten."""

from __future__ import annotations

import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedmeta.common import CredentialError, check_server_certificate
from fedmeta.server import (
    create_certificate_authority,
    create_factory_keys,
    create_server_certificate,
    load_certificate_authority,
)


@pytest.fixture()
def pki(tmp_path):
    authority = create_certificate_authority(tmp_path)
    create_server_certificate(tmp_path, authority, ["localhost", "127.0.0.1"])
    return tmp_path


def test_server_certificate_is_issued_by_the_ca_for_the_given_hosts(pki):
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_tls_handshake_on_loopback_trusts_the_server_only_through_our_ca(pki):
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki / "server.crt", pki / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        connection, _ = listener.accept()
        with server_context.wrap_socket(connection, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(2) == b"ok"
    thread.join(timeout=5)
    listener.close()


def test_private_keys_are_owner_only_and_factory_keys_load_as_openssh(tmp_path):
    authority = create_certificate_authority(tmp_path)
    create_server_certificate(tmp_path, authority, ["localhost"])
    private, public = create_factory_keys(tmp_path, "plant-a")
    for secret in ("ca.key", "server.key", "plant-a"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600
    key = load_ssh_private_key(private.read_bytes(), password=None)
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()


def test_existing_keys_are_never_overwritten_silently(pki):
    before = (pki / "ca.key").read_bytes()
    with pytest.raises(FileExistsError, match=r"ca\.key already exists"):
        create_certificate_authority(pki)
    assert (pki / "ca.key").read_bytes() == before
    create_factory_keys(pki, "plant-a")
    with pytest.raises(FileExistsError, match="plant-a already exists"):
        create_factory_keys(pki, "plant-a")


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="at least one host"):
        create_server_certificate(tmp_path, create_certificate_authority(tmp_path), [])
    with pytest.raises(ValueError, match="cannot be used as a file name"):
        create_factory_keys(tmp_path, "../escape")
    with pytest.raises(ValueError, match="cannot read the certificate authority"):
        load_certificate_authority(tmp_path / "missing")


def test_certs_command_creates_everything_then_reuses_the_ca_and_refuses_to_overwrite(tmp_path):
    from typer.testing import CliRunner

    from fedmeta.simulations.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["certs", "--out", str(tmp_path), "--host", "localhost", "--factory", "plant-a"])
    assert first.exit_code == 0, first.output
    expected = {"ca.crt", "ca.key", "server.crt", "server.key", "plant-a", "plant-a.pub"}
    assert {p.name for p in tmp_path.iterdir()} == expected
    ca_before = (tmp_path / "ca.crt").read_bytes()
    second = runner.invoke(app, ["certs", "--out", str(tmp_path), "--factory", "plant-b"])
    assert second.exit_code == 0 and "using the existing CA" in second.output
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    again = runner.invoke(app, ["certs", "--out", str(tmp_path), "--factory", "plant-a"])
    assert again.exit_code == 1 and "already exists" in " ".join(again.output.split())  # wrapped at a long path


def test_the_server_check_verifies_the_chain_and_host_as_tls_clients_do(tmp_path):
    """`cryptography`'s X.509 path validation: a wildcard covers one level of names, an IP address only itself,
    and a certificate of another CA is refused however its names read."""
    authority = create_certificate_authority(tmp_path)
    create_server_certificate(tmp_path, authority, ["*.plant.example"])
    files = (tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    for host in ("server.plant.example", "backup.plant.example", "127.0.0.1"):
        check_server_certificate(*files, host)
    for host in ("plant.example", "a.b.plant.example", "127.0.0.2"):
        with pytest.raises(CredentialError, match=f"valid for \\*.plant.example, 127.0.0.1, not for {host}"):
            check_server_certificate(*files, host)
    other = tmp_path / "other"
    create_certificate_authority(other)
    with pytest.raises(CredentialError, match="was not issued by the CA"):
        check_server_certificate(other / "ca.crt", *files[1:], "127.0.0.1")
