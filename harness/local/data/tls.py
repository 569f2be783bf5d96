"""TLS for the local endpoints: a certificate authority per home, and the endpoints'
certificate signed by it.

Neon-style URLs (`sslmode=require`) connect unchanged, but `require` checks no
certificate: whoever holds an endpoint's port once the server is gone (another local
user) could answer TLS with any certificate and ask for the password in clear. So the
URLs we hand out say `sslmode=verify-full` and name our CA (`sslrootcert`); an impostor
without the CA's key fails the handshake before any authentication message.

The CA's key (0600) never leaves the 0700 home. The endpoint certificate is issued anew
at every start (an EC key and a signature cost about a millisecond) for `localhost`,
`*.localhost`, 127.0.0.1 and ::1. An endpoint with addresses of its own (its `host` and
`pooler_host`, `cathouse_harness.local.data.hosts`) gets a certificate of its own naming them too
(`TlsMaterial.for_hosts`): the same key, a new signature, a new context; verify-full
checks the address a client dialled against the certificate's names, and no one
certificate can name every address of 127.0.0.0/8.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cathouse_harness.errors import UnsafePathError
from cathouse_harness.local.data.names import WILDCARD
from cathouse_harness.support.log import get_logger
from cathouse_harness.support.safe_paths import ensure_dir, private_home, write_private

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.x509 import Certificate, GeneralName

log = get_logger("local.tls")

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
CERT_NAME = "server.crt"
KEY_NAME = "server.key"
_CA_DAYS = 3650
_CERT_DAYS = 825
# `*.local.localhost`: the names mode's hosts (`cathouse_harness.local.data.names`)
_DNS_NAMES = ("localhost", "*.localhost", WILDCARD)
_IP_ADDRESSES = ("127.0.0.1", "::1")
# an endpoint's own certificate, written only to be loaded into its context
_LEAF_NAME = "endpoint.crt"


@dataclass(frozen=True)
class _Issuer:
    """What signs an endpoint's own certificate: the CA and the endpoints' one key."""

    directory: Path
    ca: Certificate
    ca_key: EllipticCurvePrivateKey
    key: EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsMaterial:
    """What the endpoints serve and what clients are told to trust."""

    context: ssl.SSLContext
    ca_file: Path
    # SHA-256 of the endpoint certificate (DER): SCRAM's tls-server-end-point binding
    # for a certificate signed with ECDSA-SHA256 (RFC 5929 section 4.1)
    end_point: bytes
    issuer: _Issuer | None = None

    def for_hosts(self, hosts: Sequence[str]) -> TlsMaterial:
        """The material for listeners on `hosts` (addresses or names) as well as the
        shared ones: a certificate naming them all, signed by the same CA with the same
        key (no key generation: about a signature and a context per endpoint)."""
        issuer = self.issuer
        if issuer is None or not hosts:
            return self
        der = _write_leaf(issuer, _LEAF_NAME, extra=hosts)
        path = issuer.directory / _LEAF_NAME
        try:
            context = _context(path, issuer.directory / KEY_NAME)
        finally:
            # loaded: the context holds it, nothing reads the file again
            path.unlink(missing_ok=True)
        return TlsMaterial(context, self.ca_file, hashlib.sha256(der).digest(), issuer)

    def server_context(self, *, sni_callback: Callable[..., None]) -> ssl.SSLContext:
        """A context of its own serving the shared certificate (so the same
        `end_point`), telling `sni_callback` the server name of each handshake."""
        if self.issuer is None:
            raise ValueError("this TLS material has no certificate files to serve")
        context = _context(self.issuer.directory / CERT_NAME, self.issuer.directory / KEY_NAME)
        context.sni_callback = sni_callback
        return context


def _pem_key(private: EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_or_make_ca(directory: Path) -> tuple[Certificate, EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    if cert_path.exists() and key_path.exists():
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            return certificate, private
    private = ec.generate_private_key(ec.SECP256R1())
    label = f"cathouse-harness local CA {secrets.token_hex(4)}"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False)
        .sign(private, hashes.SHA256())
    )
    write_private(key_path, _pem_key(private))
    write_private(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return certificate, private


def _san(host: str) -> GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_leaf(issuer: _Issuer, name: str, *, extra: Sequence[str] = ()) -> bytes:
    """Sign a certificate for the shared hosts and `extra` with `issuer`'s key, write it
    as `name` (0600); its DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    hosts = dict.fromkeys((*_DNS_NAMES, *_IP_ADDRESSES, *extra))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(issuer.ca.subject)
        .public_key(issuer.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.ca_key.public_key()),
            critical=False,
        )
        .sign(issuer.ca_key, hashes.SHA256())
    )
    write_private(issuer.directory / name, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate.public_bytes(serialization.Encoding.DER)


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def server_material(directory: Path) -> TlsMaterial | None:
    """The endpoints' TLS under `directory` (a folder of the 0700 home, checked): the CA made on first
    use, a fresh endpoint certificate; None when TLS cannot be set up (the endpoints then
    speak plain TCP and URLs carry no `sslmode`)."""
    try:
        private_home(directory.parent)
        ensure_dir(directory, mode=0o700)
        from cryptography.hazmat.primitives.asymmetric import ec

        ca, ca_key = _load_or_make_ca(directory)
        issuer = _Issuer(directory, ca, ca_key, ec.generate_private_key(ec.SECP256R1()))
        write_private(directory / KEY_NAME, _pem_key(issuer.key))
        der = _write_leaf(issuer, CERT_NAME)
        context = _context(directory / CERT_NAME, directory / KEY_NAME)
    except ImportError:
        log.warning("no TLS for local endpoints: the `cryptography` package is not importable")
        return None
    except (OSError, ValueError, ssl.SSLError, UnsafePathError) as exc:
        log.warning("no TLS for local endpoints: %s", exc)
        return None
    return TlsMaterial(context, directory / CA_CERT_NAME, hashlib.sha256(der).digest(), issuer)
