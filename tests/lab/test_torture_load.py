"""The campaign's last look at its jobs gives up on an API that does not answer,
instead of waiting out every job's request timeout (107:77: more than 20
minutes after an abort)."""

from __future__ import annotations

import socket
import threading

from tandem.lab.torture_load import ApiClient, ApiLoad


def test_past_the_deadline_a_silent_api_is_asked_once_not_once_per_job():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept_and_say_nothing() -> None:
        while not done.is_set():
            try:
                accepted.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept_and_say_nothing)
    t.start()
    try:
        port = srv.getsockname()[1]
        load = ApiLoad(ApiClient(f"http://127.0.0.1:{port}/client/api", "key", "secret", timeout=0.2))
        load.jobs = [{"jobid": f"job-{i}", "command": "startVirtualMachine"} for i in range(40)]
        out = load.final_status(timeout=0)
    finally:
        done.set()
        t.join(timeout=5)
        for c in accepted:
            c.close()
        srv.close()
    assert [j["status"] for j in out] == [0] * 40  # unknown counts as pending
    assert [j["jobid"] for j in out] == [f"job-{i}" for i in range(40)]
    assert len(accepted) == 1, f"{len(accepted)} requests to an API that answers nothing"
