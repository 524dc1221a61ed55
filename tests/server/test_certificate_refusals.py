"""What `fedmeta server` refuses before anything starts: a certificate out of its validity window, a server key
TLS cannot serve with or that is too weak, a factory key that is not on a curve Flower accepts, and node
authentication without TLS. Certificates and keys are made here with `cryptography`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fedmeta.common import CredentialError, check_server_certificate, load_factory_public_key
from fedmeta.server import create_certificate_authority, load_certificate_authority, plan_server
from fedmeta.server.deployment import DeploymentError
from tests.support.certificates import EXPIRED, NOT_YET_VALID, issue, secp256k1_key, write_openssh
from tests.support.cli import run_fedmeta

WINDOWS = pytest.mark.parametrize("window", [EXPIRED, NOT_YET_VALID], ids=["expired", "not-yet-valid"])


def _check(folder: Path, server_certificate: Path) -> None:
    check_server_certificate(folder / "ca.crt", server_certificate, server_certificate.with_suffix(".key"),
                             "localhost")


@WINDOWS
def test_a_server_certificate_out_of_its_validity_window_is_refused(tmp_path, window):
    authority = create_certificate_authority(tmp_path)
    certificate = issue(tmp_path / "dated.crt", ec.generate_private_key(ec.SECP384R1()), authority, window=window)
    with pytest.raises(CredentialError, match=r"server certificate .*dated\.crt is valid only from"):
        _check(tmp_path, certificate)


@WINDOWS
def test_a_ca_certificate_out_of_its_validity_window_is_refused(pki, tmp_path, window):
    """The server's own certificate is valid: only its CA is out of date."""
    issue(tmp_path / "ca.crt", load_certificate_authority(pki).private_key, window=window)
    with pytest.raises(CredentialError, match=r"CA certificate .*ca\.crt is valid only from"):
        check_server_certificate(tmp_path / "ca.crt", pki / "server.crt", pki / "server.key", "localhost")


@pytest.mark.parametrize(("key", "problem"), [
    (rsa.generate_private_key(65537, 1024), "is a 1024-bit RSA key, too weak: TLS needs 2048 bits or more"),
    (ed25519.Ed25519PrivateKey.generate(), "is neither an elliptic-curve nor an RSA key"),
    (secp256k1_key(), "uses curve secp256k1; Flower accepts NIST P-256, P-384, P-521"),
    (ec.generate_private_key(ec.SECP224R1()), "uses curve secp224r1"),
], ids=["rsa-1024", "ed25519", "secp256k1", "p-224"])
def test_a_server_key_tls_cannot_serve_with_or_too_weak_is_refused(tmp_path, key, problem):
    """Issued by the CA for the right host, so only the key is wrong."""
    certificate = issue(tmp_path / "server.crt", key, create_certificate_authority(tmp_path))
    with pytest.raises(CredentialError, match=f"server key .*server.key {problem}"):
        _check(tmp_path, certificate)


def test_an_rsa_server_key_of_2048_bits_or_a_p256_key_is_accepted(tmp_path):
    """The refusals above are of weak or unusable keys, not of a corporate PKI's RSA certificates."""
    authority = create_certificate_authority(tmp_path)
    for name, key in (("rsa.crt", rsa.generate_private_key(65537, 2048)),
                      ("p256.crt", ec.generate_private_key(ec.SECP256R1()))):
        _check(tmp_path, issue(tmp_path / name, key, authority))


@pytest.mark.parametrize("key", [rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()],
                         ids=["rsa", "ed25519"])
def test_a_factory_public_key_that_is_not_elliptic_curve_is_refused(tmp_path, key):
    """Flower's node authentication verifies ECDSA signatures only."""
    public = write_openssh(tmp_path / "plant-x", key).with_name("plant-x.pub")
    with pytest.raises(CredentialError, match=r"plant-x\.pub is not an elliptic-curve key; Flower needs one"):
        load_factory_public_key(public)


def test_node_authentication_without_tls_is_refused(pki, tmp_path):
    with pytest.raises(DeploymentError, match="node authentication needs TLS"):
        plan_server(state=tmp_path / "s", certs=None, factory_keys=pki, host="0.0.0.0", port=8000, run_config={})


def test_the_server_command_refuses_factory_keys_with_insecure(pki, tmp_path, monkeypatch):
    """--insecure drops node authentication, but factory keys given beside it ask for it: the command stops
    instead of serving factories it cannot authenticate."""
    started = []
    monkeypatch.setattr("fedmeta.server.deployment.serve", lambda plan, report: started.append(plan))
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(pki / "plant-a.pub", keys)
    code, output = run_fedmeta("server", "--insecure", "--factory-keys", str(keys), "--state", str(tmp_path / "s"))
    assert (code, started) == (1, [])
    assert "node authentication needs TLS: drop --insecure, or add --no-node-auth" in output
