"""The agent's undo of a fence it adopted (decide.adoption_to_undo), against a volume
daemon that does not answer and one that answers with an error: a real Unix socket
at the control socket's path, no etcd needed (the view is given)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading

from tandem.cluster.agent import Agent
from tandem.dcs.view import VolumeState
from tandem.volume.spec import resolve
from tandem.volume.states import DiskState
from tests.dcs.test_agent_cycle_stall import _config
from tests.volume.test_volume_cli_errors import full_queue

UP = DiskState.UP_TO_DATE


def _agent(tmp_path) -> Agent:
    cfg = _config(tmp_path, "cundo")
    spec = resolve(cfg, "db", "node1", tmp_path / "data", tmp_path / "run")
    spec.control_socket.parent.mkdir(parents=True, exist_ok=True)
    agent = Agent(cfg, "node1", spec, tmp_path / "data", tmp_path / "run")
    # The record, newer than the adopted fence, calls node1 UpToDate again; the disk
    # is still the Outdated Secondary the agent left, with no link.
    record = VolumeState(agent.resource, (("node1", UP), ("node2", UP)), "g1", revision=9)
    agent.view = dataclasses.replace(agent.view, volumes=(record,))
    agent.volume = {"disk": "Outdated", "role": "Secondary", "peer": {"connection": "Connecting"}}
    agent._adopted = (5, 17)
    return agent


def test_an_undo_the_daemon_did_not_answer_is_tried_again_and_one_refused_is_given_up(tmp_path):
    """Paused daemon (its queue full): the adoption is kept for the next cycle; before
    session 36's fix a socket timeout became an error answer and the undo was dropped
    for good, leaving the disk Outdated. An error answer gives it up."""
    agent = _agent(tmp_path)
    path = agent.spec.control_socket
    with full_queue(path):
        asyncio.run(agent._undo_stale_adoption())
    assert agent._adopted == (5, 17), "an unanswered undo must be tried again"

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        conn = server.accept()[0]
        with conn:
            conn.recv(65536)
            conn.sendall(b'{"ok": false, "error": "the disk changed since the outdate"}\n')

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        asyncio.run(agent._undo_stale_adoption())
    finally:
        t.join(5)
        server.close()
    assert agent._adopted is None, "an undo the daemon refused must be given up"


def test_an_outdate_the_daemon_did_not_answer_is_adopted_once_carried_out(tmp_path):
    """The agent adopts a fence (outdate), the daemon is paused and answers nothing,
    then carries it out when it resumes. The agent never had the mark: the disk stayed
    Outdated for good once a newer record called it UpToDate. Now the status's mark
    of the agent's outdate is adopted at the next cycle."""
    agent = _agent(tmp_path)
    agent._adopted = None
    fenced = VolumeState(agent.resource, (("node1", DiskState.OUTDATED), ("node2", UP)), "g1",
                         revision=12)
    agent.view = dataclasses.replace(agent.view, volumes=(fenced,))
    agent.volume = {"disk": "UpToDate", "role": "Secondary", "peer": {"connection": "Connecting"}}
    path = agent.spec.control_socket
    with full_queue(path):
        asyncio.run(agent._adopt_recorded_outdated())
    assert agent._adopted is None and agent._outdate_unanswered is not None
    revision, nonce = agent._outdate_unanswered
    assert revision == 12
    outdated = {"disk": "Outdated", "role": "Secondary", "peer": {"connection": "Connecting"}}
    # An outdate that is not ours (an operator's: no nonce; another request's) is not
    # adopted, nor one not carried out yet.
    for shown in (None, {"mark": 40, "nonce": nonce + 1}):
        agent.volume = {**outdated, **({"agent_outdate": shown} if shown else {})}
        asyncio.run(agent._adopt_recorded_outdated())
        assert agent._adopted is None and agent._outdate_unanswered == (12, nonce)
    # The daemon resumed and carried ours out: its status shows the mark and our nonce.
    agent.volume = {**outdated, "agent_outdate": {"mark": 41, "nonce": nonce}}
    asyncio.run(agent._adopt_recorded_outdated())
    assert agent._adopted == (12, 41) and agent._outdate_unanswered is None
