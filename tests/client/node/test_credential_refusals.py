"""What `fedmeta client` refuses before its SuperNode starts: a CA certificate out of its validity window, a
factory key Flower's node authentication cannot sign with, and a key without TLS. Certificates and keys are
made here with `cryptography`."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fedmeta.client import FactoryError, plan_factory
from fedmeta.common import CredentialError
from fedmeta.server import load_certificate_authority
from tests.support.certificates import EXPIRED, NOT_YET_VALID, issue, secp256k1_key, write_openssh, write_pem
from tests.support.cli import run_fedmeta


def _plan(table: tuple[Path, Path], key: Path | None, ca: Path | None) -> None:
    data, schema = table
    plan_factory(server="127.0.0.1:8000", data=data, schema=schema, key=key, ca=ca, state=data.parent / "state")


@pytest.mark.parametrize("window", [EXPIRED, NOT_YET_VALID], ids=["expired", "not-yet-valid"])
def test_a_ca_certificate_out_of_its_validity_window_is_refused(pki, table, tmp_path, window):
    """The federation's own CA key, re-dated: only its validity is wrong."""
    ca = issue(tmp_path / "ca.crt", load_certificate_authority(pki).private_key, window=window)
    with pytest.raises(CredentialError, match=r"CA certificate .*ca\.crt is valid only from"):
        _plan(table, pki / "plant-a", ca)


@pytest.mark.parametrize("key", [rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()],
                         ids=["rsa", "ed25519"])
def test_a_factory_key_that_is_not_elliptic_curve_is_refused(pki, table, tmp_path, key):
    """A valid OpenSSH key of another algorithm: Flower's node authentication signs with ECDSA only."""
    private = write_openssh(tmp_path / "plant-x", key)
    with pytest.raises(CredentialError, match=r"factory key .*plant-x is not an elliptic-curve key; Flower needs one"):
        _plan(table, private, pki / "ca.crt")


def test_a_factory_key_on_a_curve_openssh_cannot_carry_is_refused(pki, table, tmp_path):
    """`openssl ecparam -name secp256k1 -genkey`'s key, as PEM: OpenSSH, and so Flower, has no such curve."""
    private = write_pem(tmp_path / "plant-x.key", secp256k1_key())
    with pytest.raises(CredentialError, match=r"plant-x\.key is not an unencrypted OpenSSH private key"):
        _plan(table, private, pki / "ca.crt")


def test_a_factory_key_without_tls_is_refused(pki, table):
    with pytest.raises(FactoryError, match="node authentication needs TLS: a factory key cannot be used with "
                                           "--insecure"):
        _plan(table, pki / "plant-a", None)


def test_the_client_command_refuses_a_key_with_insecure(pki, table, monkeypatch):
    """--insecure with --key asked for node authentication too: the command stops instead of joining
    unauthenticated."""
    started = []
    monkeypatch.setattr("fedmeta.client.node.deployment.run_factory", lambda plan, report: started.append(plan))
    data, schema = table
    code, output = run_fedmeta("client", "--server", "127.0.0.1:8000", "--data", str(data), "--schema", str(schema),
                               "--insecure", "--key", str(pki / "plant-a"), "--state", str(data.parent / "state"))
    assert (code, started) == (1, [])
    assert "node authentication needs TLS: a factory key cannot be used with --insecure" in output
