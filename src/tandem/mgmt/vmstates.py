"""What each VM command does in each VM state: a table, no I/O.

Everything that decides a VM's lifecycle lives here, so it can be read top to
bottom and tested without a database or a host. A job looks up
`plan(command, state)` when it runs — not when it is accepted, because the
per-VM queue may hold other operations before it — and executes the plan:

- `refuse`: the command makes no sense in this state (job fails with 431);
- `noop`: already there (start a Running VM): succeed without touching the host;
- otherwise set `during` (if any), ask the host for `host_op`, then set `after`.

A transitional state in the table (`Starting`, `Stopping`, `Expunging`) can only
have been written by the same job on an earlier attempt — the queue guarantees
no other job ran in between — so it means "carry on", which is what makes a job
safe to re-run after a takeover.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class VmState(StrEnum):
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    DESTROYED = "Destroyed"
    EXPUNGING = "Expunging"
    ERROR = "Error"


S = VmState


@dataclass(frozen=True)
class Plan:
    host_op: str | None = None  # None: nothing to ask the host
    during: VmState | None = None
    after: VmState | None = None  # None: leave the state as it is
    removed: bool = False  # the VM disappears from lists (expunged)
    refuse: bool = False

    @property
    def noop(self) -> bool:
        return not self.refuse and self.host_op is None and self.after is None


REFUSE = Plan(refuse=True)
NOOP = Plan()

_START = Plan("start", S.STARTING, S.RUNNING)
_STOP = Plan("stop", S.STOPPING, S.STOPPED)
_DESTROY = Plan("destroy", None, S.DESTROYED)
_DESTROY_EXPUNGE = Plan("destroy", S.EXPUNGING, S.EXPUNGING, removed=True)

# (command, state) -> plan; anything missing is refused.
TABLE: dict[tuple[str, VmState | None], Plan] = {
    ("deploy", S.STARTING): Plan("create", None, None),  # `after` comes from the host's answer
    ("deploy", S.STOPPED): Plan("create", None, None),
    ("start", S.STOPPED): _START,
    ("start", S.STARTING): _START,
    ("start", S.ERROR): _START,
    ("start", S.RUNNING): NOOP,
    ("stop", S.RUNNING): _STOP,
    ("stop", S.STOPPING): _STOP,
    ("stop", S.ERROR): _STOP,
    ("stop", S.STOPPED): NOOP,
    ("reboot", S.RUNNING): Plan("reboot", None, None),
    **{("destroy", s): _DESTROY for s in (S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.ERROR)},
    ("destroy", S.DESTROYED): NOOP,
    ("destroy", S.EXPUNGING): NOOP,
    ("destroy", None): NOOP,
    **{("expunge", s): _DESTROY_EXPUNGE for s in (S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.ERROR,
                                                  S.EXPUNGING)},
    # Destroyed VMs are already gone from the host: expunging them is ours alone.
    ("expunge", S.DESTROYED): Plan(None, None, S.EXPUNGING, removed=True),
    ("expunge", None): NOOP,
}


def plan(command: str, state: str | None) -> Plan:
    """The plan for `command` (deploy, start, stop, reboot, destroy, expunge) in `state`."""
    key = VmState(state) if state is not None else None
    return TABLE.get((command, key), REFUSE)
