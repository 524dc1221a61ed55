"""Certificates and keys that `fedmeta certs` never writes (out of date, other algorithms, other curves), made
in the test with `cryptography`."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from fedmeta.server import CertificateAuthority

DAY = datetime.timedelta(days=1)
EXPIRED, NOT_YET_VALID = (-30 * DAY, -DAY), (DAY, 30 * DAY)  # validity windows, from now


def issue(path: Path, key: CertificateIssuerPrivateKeyTypes, authority: CertificateAuthority | None = None, *,
          window: tuple[datetime.timedelta, datetime.timedelta] = (-DAY, 30 * DAY),
          host: str = "localhost") -> Path:
    """A certificate for ``key`` valid from now + ``window[0]`` to now + ``window[1]``, written to ``path``
    (PEM) with its key beside it (``.key``, PKCS8): a server certificate for ``host`` signed by ``authority``,
    or without one a self-signed CA."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host if authority else "Test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.certificate.subject if authority else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + window[0])
        .not_valid_after(now + window[1])
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if authority is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        certificate = builder.sign(key, hashes.SHA384())
    else:
        builder = (
            builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.certificate.public_key()),
                           critical=False)
        )
        certificate = builder.sign(authority.private_key, hashes.SHA384())
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    write_pem(path.with_suffix(".key"), key)
    return path


def write_pem(path: Path, key: CertificateIssuerPrivateKeyTypes) -> Path:
    """``key`` as OpenSSL writes it: PEM, PKCS8, unencrypted."""
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


def write_openssh(path: Path, key: CertificateIssuerPrivateKeyTypes) -> Path:
    """``key`` as a factory's key pair: ``path`` (OpenSSH private key) and ``path.pub`` (OpenSSH public key)."""
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    path.with_name(f"{path.name}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return path


def secp256k1_key() -> ec.EllipticCurvePrivateKey:
    """A key on Bitcoin's curve: neither TLS nor OpenSSH nor Flower uses it."""
    return ec.generate_private_key(ec.SECP256K1())
