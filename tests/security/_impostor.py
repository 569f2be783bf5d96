"""A listener another local user could run on a freed endpoint port.

It is a real socket server: it accepts PostgreSQL's SSLRequest and completes TLS with
its own certificate, made for the very names we hand out (localhost, 127.0.0.1) but
signed by nobody we trust, or answers in plain text when the client asks for no TLS;
then it reads the startup message, asks for the password in clear
(AuthenticationCleartextPassword) and records every byte it receives.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
import threading
from pathlib import Path

SSL_REQUEST = 80877103
CLEARTEXT_PASSWORD = b"R" + struct.pack("!II", 8, 3)


def _own_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            *([x509.IPAddress(ipaddress.ip_address(host))] if host != "127.0.0.1" else [])]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "impostor.crt", directory / "impostor.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


class Impostor:
    """Listens on `host`:`port` until closed (its certificate names `host` too);
    `received` is all it was sent."""

    def __init__(self, port: int, directory: Path, host: str = "127.0.0.1") -> None:
        cert, key = _own_certificate(directory, host)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.received = bytearray()
        self.connections = 0
        self.asked_for_password = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="impostor", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def _read(self, conn: socket.socket | ssl.SSLSocket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            self._record(chunk)
            data += chunk
        return data

    def _serve(self, raw: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        conn: socket.socket | ssl.SSLSocket = raw
        with contextlib.suppress(OSError, ConnectionError, ssl.SSLError), raw:
            conn.settimeout(10)
            (length,) = struct.unpack("!I", self._read(conn, 4))
            body = self._read(conn, length - 4)
            if struct.unpack("!I", body[:4])[0] == SSL_REQUEST:
                conn.sendall(b"S")
                conn = self.context.wrap_socket(raw, server_side=True)
                (length,) = struct.unpack("!I", self._read(conn, 4))
                self._read(conn, length - 4)
            conn.sendall(CLEARTEXT_PASSWORD)
            with self._lock:
                self.asked_for_password += 1
            while True:  # whatever the client answers is what a thief would keep
                self._read(conn, 1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self.sock.close()
        self._thread.join(5)
        with self._lock:
            for conn in self._open:  # so the next test can bind the port again
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def __enter__(self) -> Impostor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
