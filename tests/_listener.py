"""A PostgreSQL stand-in that never answers: a listening socket on loopback. Anything that
connected sits in its accept queue, so `accepted` tells whether anything reached it (the
guard's tests: a refused connection must not even open a socket)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def listening() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    try:
        yield server
    finally:
        server.close()


def accepted(server: socket.socket) -> int:
    """How many connections arrived since the last call."""
    count = 0
    while True:
        try:
            connection, _ = server.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1
