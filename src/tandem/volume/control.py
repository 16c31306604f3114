"""The volume daemon's control socket: one JSON request, one JSON reply.

A Unix socket in the node's run directory, root only (mode 600), so the CLI and
the cluster agent can ask a running daemon for its status or tell it to change
role without any network exposure. Errors come back as {"ok": false, "error":
"..."} and become one-line TandemErrors at the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.errors import TandemError

MAX_REQUEST = 64 * 1024


class ControlError(TandemError):
    pass


Handler = Callable[[dict[str, Any]], Any]


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]):
        self.path = path
        self.handlers = handlers
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._sock:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._sock
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(120)
            try:
                raw = _read_line(conn)
                req = json.loads(raw)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError("request must be an object with a string 'cmd'")
                handler = self.handlers.get(req["cmd"])
                if handler is None:
                    raise ControlError(f"unknown command {req['cmd']!r}")
                reply = {"ok": True, "result": handler(req)}
            except TandemError as e:
                reply = {"ok": False, "error": str(e)}
            except (ValueError, OSError) as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            except Exception as e:  # keep the daemon alive; report what broke
                reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply, default=str).encode() + b"\n")


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    return buf


def call(path: Path, cmd: str, timeout: float = 60, **args: Any) -> Any:
    """Send one command to a daemon; raise ControlError with its message on failure."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ControlError(f"no volume daemon at {path} (start it with `tandem volume up`)") from None
    with sock:
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        raw = _read_line(sock)
    if not raw:
        raise ControlError(f"volume daemon at {path} closed the connection")
    reply = json.loads(raw)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")
