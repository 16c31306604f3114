"""The volume daemon's control socket: one JSON request, one JSON reply.

A Unix socket in the node's run directory, root only (mode 600), so the CLI and
the cluster agent can ask a running daemon for its status or tell it to change
role without any network exposure. Errors come back as {"ok": false, "error":
"..."} and become one-line TandemErrors at the client.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.errors import TandemError

MAX_REQUEST = 64 * 1024
MAX_REPLY = 16 << 20


class ControlError(TandemError):
    pass


class ControlUnanswered(ControlError):
    """The daemon is there but gave no answer: no connection accepted or no reply in
    time (paused, stuck), or the connection broke. Unlike an error answer or no daemon
    at all, the request may still be carried out later, and trying again is right."""


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


def _read_line(conn: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError(f"more than {limit} bytes without a newline")
    return buf


#: errnos of a connection that broke or was never taken: the daemon may still carry
#: the request out (a paused one does when it resumes), so trying again is right
_UNANSWERED_ERRNOS = frozenset({errno.EAGAIN, errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED,
                                errno.ETIMEDOUT})


def call(path: Path, cmd: str, timeout: float = 60, **args: Any) -> Any:
    """Send one command to a daemon; raise ControlError with one line on any failure:
    its own error, no daemon, a socket we may not use; ControlUnanswered when it gave
    no answer (none within `timeout`, the connection broke or closed first)."""
    deadline = time.monotonic() + timeout
    sock = _connect(path, timeout, deadline)
    with sock:
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            raw = _read_line(sock, MAX_REPLY)
        except TimeoutError:
            raise ControlUnanswered(f"volume daemon at {path} did not answer {cmd!r} within"
                                    f" {timeout:g} s (busy, or paused?); see its log") from None
        except OSError as e:
            raise _failure(e)(f"volume daemon at {path}: {cmd!r} failed: {_why(e)}") from None
        except ValueError as e:
            raise ControlError(f"volume daemon at {path}: {cmd!r}: the answer is too long: {e}") from None
    if not raw.endswith(b"\n"):  # (EOF first: the daemon died or closed mid-answer)
        raise ControlUnanswered(f"volume daemon at {path} closed the connection without"
                                f" {'a whole' if raw else 'an'} answer")
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlError(f"volume daemon at {path} answered {cmd!r} with something not JSON:"
                           f" {raw[:80]!r}") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error") if isinstance(reply, dict)
                           else f"volume daemon at {path} answered {cmd!r} with {reply!r:.80}")
    return reply.get("result")


def _connect(path: Path, timeout: float, deadline: float) -> socket.socket:
    """A connected socket. A daemon that is paused or stuck accepts nothing, and once
    its listen queue is full connect fails at once with EAGAIN (a Unix socket with a
    timeout does not wait): tried again until the deadline, then one line. The
    agent's calls came out of it as BlockingIOError tracebacks, and an HA cycle that
    failed on one made no decision at all while the daemon stayed paused."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise ControlError(f"no volume daemon at {path} (start it with `tandem volume up`)") from None
        except BlockingIOError:
            sock.close()
            if time.monotonic() + 0.02 >= deadline:
                raise ControlUnanswered(f"volume daemon at {path} accepted no connection within"
                                        f" {timeout:g} s (its queue is full: paused or stuck?)"
                                        ) from None
            time.sleep(0.02)
        except TimeoutError:
            sock.close()
            raise ControlUnanswered(f"volume daemon at {path} accepted no connection within"
                                    f" {timeout:g} s (busy, or paused?)") from None
        except OSError as e:
            sock.close()
            raise _failure(e)(f"cannot reach the volume daemon at {path}: {_why(e)}") from None


def _failure(e: OSError) -> type[ControlError]:
    return ControlUnanswered if e.errno in _UNANSWERED_ERRNOS else ControlError


def _why(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
