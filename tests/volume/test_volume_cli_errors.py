"""`tandem volume ...` against a daemon that does not answer: one line, no traceback."""

from __future__ import annotations

import socket
import threading

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
