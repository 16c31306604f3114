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


def test_an_api_client_that_dies_says_so():
    """Review 29: a worker killed by an error its loop does not expect (an answer
    without the VM) stopped submitting jobs in silence, and "every accepted job
    completes" then held for want of jobs. It reports its death, and the campaign
    counts that as a violation."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    from tandem.lab.torture import Options, ScheduleResult, analyse
    from tandem.lab.torture_plan import draw_schedule

    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            command = parse_qs(urlsplit(self.path).query).get("command", [""])[0]
            body = {"deployVirtualMachine": {"jobid": "j1", "id": "v1"},
                    "queryAsyncJobResult": {"jobstatus": 1, "jobresult": {}}}.get(command, {})
            data = json.dumps({"response": body}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    deaths: list[tuple[int, str]] = []
    try:
        load = ApiLoad(ApiClient(f"http://127.0.0.1:{srv.server_address[1]}/client/api", "key", "secret",
                                 timeout=2), pause=0, on_death=lambda w, why: deaths.append((w, why)))
        worker = threading.Thread(target=load._worker, args=(3,))
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive()
    finally:
        srv.shutdown()
        srv.server_close()
    [(w, why)] = deaths
    assert w == 3 and "KeyError" in why and "virtualmachine" in why
    r = ScheduleResult(draw_schedule(1, 0, 10), t_start=0.0, t_healed=10.0, t_converged=12.0, t_end=15.0)
    died = {"kind": "workload_died", "t": 5.0, "worker": w, "why": why}
    out = analyse([died], [], [], set(), [], [], [r], Options(), None)
    [v] = [v for v in out["violations"] if "API client 3 died" in v["what"]]
    assert v["check"] == "jobs" and v["schedule"] == r.schedule.name
