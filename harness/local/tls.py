"""A self-signed certificate for the local endpoints, so Neon-style URLs
(`sslmode=require`) connect unchanged.

Made once per cluster directory with the `cryptography` package when it is importable,
else with the `openssl` command; without either the endpoints speak plain TCP and the
caller hands out URLs without `sslmode`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import ssl
import subprocess
from pathlib import Path

from harness.log import get_logger
from harness.safe_paths import ensure_dir, write_private

log = get_logger("local.tls")

CERT_NAME = "server.crt"
KEY_NAME = "server.key"
_VALID_DAYS = 3650


def _with_cryptography(cert: Path, key: Path) -> bool:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    write_private(
        key,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(cert, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return True


def _with_openssl(cert: Path, key: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    result = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            str(_VALID_DAYS),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        return False
    key.chmod(0o600)
    return True


def ensure_certificate(directory: Path) -> tuple[Path, Path] | None:
    """The certificate and key under `directory`, made on first use; None if we cannot."""
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if cert.exists() and key.exists():
        return cert, key
    ensure_dir(directory, mode=0o700)
    for maker in (_with_cryptography, _with_openssl):
        try:
            if maker(cert, key):
                return cert, key
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.debug("certificate generation with %s failed: %s", maker.__name__, exc)
        for path in (cert, key):
            with contextlib.suppress(OSError):
                path.unlink()
    log.warning("no TLS for local endpoints: neither `cryptography` nor `openssl` is available")
    return None


def server_context(directory: Path) -> ssl.SSLContext | None:
    """A TLS server context for the endpoint proxy, or None when TLS is unavailable."""
    pair = ensure_certificate(directory)
    if pair is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(pair[0]), str(pair[1]))
    except (ssl.SSLError, OSError) as exc:
        log.warning("no TLS for local endpoints: the certificate does not load (%s)", exc)
        return None
    return context
