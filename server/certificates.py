"""Certificates and keys for a secured federation, made with `cryptography`.

The central team creates a certificate authority, a TLS certificate for the server's
host names, and one key pair per factory. Factories get the CA certificate (to trust
the server) and their own private key (to authenticate as a registered node); the
server registers the factories' public keys. Flower's node authentication reads EC keys
in OpenSSH format, so factory keys are written that way.

Private keys are written owner-read/write only (0600) and never overwritten: an
existing file is an error unless the caller asks to replace it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "create_certificate_authority",
    "create_factory_keys",
    "create_server_certificate",
    "load_certificate_authority",
]

_CURVE = ec.SECP384R1()
LOOPBACK = "127.0.0.1"  # where the server's own processes reach its SuperLink


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


def _write(path: Path, data: bytes, *, private: bool, overwrite: bool) -> Path:
    """Write atomically; private files are 0600 from the first byte; never replace silently."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise ValueError(f"validity must be at least 1 day, got {days}")
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_certificate_authority(
    folder: Path, *, common_name: str = "FedMeta Factory CA", days: int = 3650, overwrite: bool = False
) -> CertificateAuthority:
    """``ca.crt`` and ``ca.key`` in ``folder``."""
    key = ec.generate_private_key(_CURVE)
    start, end = _validity(days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(folder / "ca.key", _pem_key(key), private=True, overwrite=overwrite)
    _write(folder / "ca.crt", certificate.public_bytes(serialization.Encoding.PEM), private=False, overwrite=overwrite)
    return CertificateAuthority(certificate, key)


def load_certificate_authority(folder: Path) -> CertificateAuthority:
    """Read ``ca.crt`` and ``ca.key``; a missing or unreadable file names itself."""
    try:
        certificate = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the certificate authority in {folder}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / 'ca.key'} is not an elliptic-curve key")
    return CertificateAuthority(certificate, key)


def _subject_alternative_names(hostnames: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def create_server_certificate(
    folder: Path, authority: CertificateAuthority, hostnames: list[str], *, days: int = 825, overwrite: bool = False
) -> Path:
    """``server.crt`` and ``server.key`` valid for ``hostnames`` (DNS names or IP addresses) and for 127.0.0.1,
    where the server's own processes reach its Control API (`server.superlink`)."""
    if not hostnames:
        raise ValueError("name at least one host name or IP address the server is reached at")
    hostnames = [*hostnames, *([LOOPBACK] if LOOPBACK not in hostnames else [])]
    key = ec.generate_private_key(_CURVE)
    start, end = _validity(days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_subject_alternative_names(hostnames), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Which CA key signed it: the X.509 profile `common.security.credentials` verifies against requires it.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.certificate.public_key()),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(authority.private_key, hashes.SHA384())
    )
    _write(folder / "server.key", _pem_key(key), private=True, overwrite=overwrite)
    return _write(
        folder / "server.crt", certificate.public_bytes(serialization.Encoding.PEM), private=False, overwrite=overwrite
    )


def create_factory_keys(folder: Path, factory: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """``<factory>`` (private, OpenSSH) and ``<factory>.pub`` for Flower node authentication."""
    if not factory or "/" in factory or factory.startswith("."):
        raise ValueError(f"factory name {factory!r} cannot be used as a file name")
    key = ec.generate_private_key(_CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private_path = _write(folder / factory, private, private=True, overwrite=overwrite)
    public_path = _write(folder / f"{factory}.pub", public + b"\n", private=False, overwrite=overwrite)
    return private_path, public_path
