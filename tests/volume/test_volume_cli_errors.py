"""`tandem volume ...` against a daemon that does not answer: one line, no traceback."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest


def test_a_daemon_that_accepts_and_never_answers_gives_one_line(tmp_path):
    """A volume daemon paused or stuck behind held I/O accepts on its control socket
    (the kernel does) and says nothing: the CLI's socket timeout came out as a
    TimeoutError traceback (review 35)."""
    path = tmp_path / "volume-db.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    from tandem.cli import volume_cmd
    from tandem.errors import TandemError

    class Spec:
        control_socket = path

    try:
        with pytest.raises(TandemError) as err:
            volume_cmd._call(Spec(), "status", timeout=0.5)  # type: ignore[arg-type]
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        server.close()
    assert "did not answer 'status' within 0.5 s" in str(err.value)
    assert "\n" not in str(err.value)


@contextlib.contextmanager
def full_queue(path) -> Iterator[None]:
    """A listening socket at `path` that never accepts (a paused daemon), its queue
    filled; closed and removed at the end."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    queued: list[socket.socket] = []
    try:
        for _ in range(64):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(str(path))
            except BlockingIOError:
                c.close()
                break
            queued.append(c)
        else:
            raise AssertionError("the listen queue never filled")
        yield
    finally:
        for c in queued:
            c.close()
        server.close()
        path.unlink(missing_ok=True)


def test_a_paused_daemon_with_a_full_queue_is_one_line_for_the_agent_and_the_cli(tmp_path):
    """A volume daemon paused long enough fills its control socket's queue; connect
    then fails at once with EAGAIN. The agent's calls raised BlockingIOError: 23 HA
    cycles and 72 lease renewals of the last campaign ended in tracebacks, and a
    cycle that raised decided nothing while the daemon stayed paused."""
    import asyncio
    import time

    from tandem.cluster.volume_resource import volume_call
    from tandem.errors import TandemError
    from tandem.volume import control

    path = tmp_path / "volume-db.sock"
    with full_queue(path):
        t0 = time.monotonic()
        with pytest.raises(control.ControlError) as err:
            control.call(path, "status", timeout=0.5)
        waited = time.monotonic() - t0
        assert "accepted no connection within 0.5 s" in str(err.value), err.value
        assert isinstance(err.value, control.ControlUnanswered)
        assert 0.4 <= waited < 3, waited  # tried again until its deadline, not at once
        with pytest.raises(TandemError) as err2:
            asyncio.run(volume_call(path, "write-lease", timeout=0.3, until=1.0))
        assert "queue is full" in str(err2.value) and "\n" not in str(err2.value)


def test_a_reply_that_is_not_json_or_a_reset_is_one_line(tmp_path):
    """Error answers are ControlError; a connection that broke or closed without an
    answer is ControlUnanswered (the request may still be carried out: the agent
    tries an undo-outdate again then, and gives it up after an error answer)."""
    import time

    from tandem.volume import control

    path = tmp_path / "volume-db.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    replies = [b"garbage\n", b"[1, 2]\n", b'{"ok": false, "error": "refused: no"}\n', "reset", None,
               b'{"ok": true, "res']

    def serve() -> None:
        for reply in replies:
            conn = server.accept()[0]
            with conn:
                if reply == "reset":  # closed with the request unread: ECONNRESET
                    time.sleep(0.2)
                    continue
                conn.recv(65536)
                if reply is not None:
                    conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        errors = []
        for _ in replies:
            with pytest.raises(control.ControlError) as err:
                control.call(path, "status", timeout=2)
            errors.append(err.value)
    finally:
        t.join(5)
        server.close()
    msgs = [str(e) for e in errors]
    assert "not JSON" in msgs[0] and "[1, 2]" in msgs[1] and msgs[2] == "refused: no", msgs
    # (a reset, or a broken pipe if the client sent only after the close)
    assert "'status' failed: Connection reset by peer" in msgs[3] or "Broken pipe" in msgs[3], msgs
    assert "closed the connection without an answer" in msgs[4], msgs
    assert "closed the connection without a whole answer" in msgs[5], msgs
    unanswered = [isinstance(e, control.ControlUnanswered) for e in errors]
    assert unanswered == [False, False, False, True, True, True], msgs
    assert all("\n" not in m for m in msgs)
