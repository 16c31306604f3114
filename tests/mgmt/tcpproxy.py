"""A loopback TCP proxy for tests that need a database link to misbehave on cue."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards each accepted connection to `upstream_port`. Subclasses decide per
    connection (`accept_hook`: False keeps the client connected but unanswered)
    and per chunk (`chunk_hook`: False cuts both sides)."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.held: list[socket.socket] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def accept_hook(self, client: socket.socket) -> bool:
        return True

    def chunk_hook(self, data: bytes, to_server: bool, state: dict) -> bool | bytes:
        """True: forward `data`; False: cut both sides; bytes: forward those instead."""
        return True

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        for s in self.held:
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if not self.accept_hook(client):
                self.held.append(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            state: dict = {}
            for src, dst, to_server in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, state, to_server), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, to_server: bool) -> None:
        try:
            while data := src.recv(65536):
                verdict = self.chunk_hook(data, to_server, state)
                if verdict is False:
                    break
                dst.sendall(verdict if isinstance(verdict, bytes) else data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
