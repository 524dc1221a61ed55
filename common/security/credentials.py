"""Reading the federation's certificates and factory keys, with errors that name the file.

Flower reports a bad certificate or key only once a process is up and trying to connect,
often as a generic connection failure. The server and factory commands check their
files first with these loaders, so a wrong path or a swapped file is reported before
anything starts.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

__all__ = [
    "CredentialError",
    "certificate_names",
    "check_server_certificate",
    "load_certificate",
    "load_factory_private_key",
    "load_factory_public_key",
]

_HINT = "`fedmeta certs` writes it"


class CredentialError(ValueError):
    """A certificate or key file that is missing, unreadable or of the wrong kind."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CredentialError(f"{what} {path} does not exist ({_HINT})") from None
    except IsADirectoryError:
        raise CredentialError(f"{what} {path} is a folder, not a file") from None
    except OSError as error:
        raise CredentialError(f"{what} {path} cannot be read: {error.strerror}") from None


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """A PEM X.509 certificate that is valid now."""
    content = _read(path, what)
    try:
        certificate = x509.load_pem_x509_certificate(content)
    except ValueError:
        raise CredentialError(f"{what} {path} is not a PEM certificate") from None
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise CredentialError(
            f"{what} {path} is valid only from {certificate.not_valid_before_utc:%Y-%m-%d} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d}"
        )
    return certificate


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The host names and IP addresses a server certificate is valid for."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))]


def _verification_failure(authority: x509.Certificate, certificate: x509.Certificate, host: str
                          ) -> VerificationError | None:
    """Why `cryptography`'s X.509 path validation of ``certificate`` for ``host`` (a DNS name, wildcards
    included, or an IP address) against ``authority`` fails; None where it passes."""
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    try:
        PolicyBuilder().store(Store([authority])).build_server_verifier(subject).verify(certificate, [])
    except VerificationError as failure:
        return failure
    return None


def check_server_certificate(ca_path: Path, cert_path: Path, key_path: Path, host: str) -> None:
    """The server certificate is issued by the CA, matches its key and is valid for ``host``."""
    authority = load_certificate(ca_path, "CA certificate")
    certificate = load_certificate(cert_path, "server certificate")
    content = _read(key_path, "server key")
    try:
        key = serialization.load_pem_private_key(content, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CredentialError(f"server key {key_path} is not an unencrypted PEM private key") from None
    _check_server_key(key, key_path)
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CredentialError(f"server key {key_path} does not belong to the server certificate {cert_path}")
    failure = _verification_failure(authority, certificate, host)
    if failure is None:
        return
    names = certificate_names(certificate)
    # A name the certificate is for (a wildcard's first level filled in): does it verify at all?
    if not names or _verification_failure(authority, certificate, names[0].replace("*", "a", 1)) is not None:
        raise CredentialError(f"server certificate {cert_path} was not issued by the CA {ca_path} ({failure}); "
                              "create it again with `fedmeta certs --overwrite`")
    raise CredentialError(  # valid for a name of its own: only the host is wrong
        f"server certificate {cert_path} is valid for {', '.join(names)}, not for {host}; "
        f"create it with `fedmeta certs --host {host} ...`"
    )


def _check_server_key(key: object, path: Path) -> None:
    """A key the server's TLS can serve with and that resists attack: elliptic-curve on a curve Flower accepts,
    or RSA of 2048 bits or more."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key, path, "server key")
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise CredentialError(f"server key {path} is a {key.key_size}-bit RSA key, too weak: TLS needs 2048 "
                                  "bits or more (`fedmeta certs` writes an elliptic-curve one)")
    else:
        raise CredentialError(f"server key {path} is neither an elliptic-curve nor an RSA key; Flower's TLS "
                              "serves with those only (`fedmeta certs` writes an elliptic-curve one)")


def _check_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, path: Path, what: str) -> None:
    if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1):
        raise CredentialError(f"{what} {path} uses curve {key.curve.name}; Flower accepts NIST P-256, P-384, P-521")


def load_factory_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A factory's OpenSSH elliptic-curve private key (what Flower's node authentication signs with)."""
    content = _read(path, "factory key")
    try:
        key = serialization.load_ssh_private_key(content, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CredentialError(
            f"factory key {path} is not an unencrypted OpenSSH private key ({_HINT} with --factory NAME)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialError(f"factory key {path} is not an elliptic-curve key; Flower needs one")
    _check_curve(key, path, "factory key")
    return key


def load_factory_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A factory's OpenSSH elliptic-curve public key (``<factory>.pub``), as the server registers it."""
    content = _read(path, "factory public key")
    try:
        key = serialization.load_ssh_public_key(content)
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialError(f"factory public key {path} is not an OpenSSH public key ({_HINT})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CredentialError(f"factory public key {path} is not an elliptic-curve key; Flower needs one")
    _check_curve(key, path, "factory public key")
    return key
