"""How long a node whose resources failed stays out of the race for the leader key.

A fixed penalty turns a fault that follows the data (a full volume, a config
that MariaDB refuses, a corrupt table) into an endless ping-pong: each node
fails in turn, each becomes eligible again a few seconds later, and every
round trip is a failover with its resync and unavailability (torture 11:77,
78 failovers in a row). Pacemaker stops the ping-pong with a migration
threshold and a failure timeout; here the penalty doubles with every failure
that follows the previous one within `reset` seconds, up to `longest`. A node
that fails once now and then is out for `first` seconds, as before; one that
keeps failing is left alone long enough for the operator to look, while the
node that is still leader keeps what it can running.

Pure bookkeeping on the caller's monotonic clock (unit-testable without one).
"""

from __future__ import annotations

from dataclasses import dataclass

#: at most this many characters of the last failure go into the member record
REASON_CHARS = 200


@dataclass
class FailurePenalty:
    first: float = 10.0  #: seconds out after a first failure
    longest: float = 300.0  #: the penalty never grows past this
    reset: float = 600.0  #: a failure this long after the previous one counts as a first again

    failures: int = 0  #: failures in the current run (each within `reset` of the one before)
    last_at: float | None = None
    last_reason: str = ""

    def record(self, now: float, reason: str) -> float:
        """Count a failure at `now`; returns the penalty it earns, in seconds.

        Only a failure after the penalty was served doubles it: a leader that
        retries its start while no peer can take over fails every second or two,
        and counting each of those reached the longest penalty within five seconds
        (torture 15:41); such a failure starts the same penalty again from now."""
        self.last_reason = reason[:REASON_CHARS]
        if self.last_at is not None and now - self.last_at > self.reset:
            self.failures = 0
        if self.failures and now < self.eligible_at():
            self.last_at = now
            return self.penalty()
        self.failures += 1
        self.last_at = now
        return self.penalty()

    def penalty(self) -> float:
        if self.failures == 0:
            return 0.0
        return min(self.longest, self.first * 2 ** (self.failures - 1))

    def eligible_at(self) -> float:
        return (self.last_at or 0.0) + self.penalty()

    def served(self, now: float) -> bool:
        """Has the penalty of the last failure run out at `now`?"""
        return self.last_at is None or now >= self.eligible_at()

    def clear(self) -> int:
        """The operator fixed the cause (``tandem cleanup``): forget every failure.
        Returns how many were forgotten."""
        n, self.failures, self.last_at, self.last_reason = self.failures, 0, None, ""
        return n

    def recent(self, now: float) -> int:
        """Failures that still count at `now` (0 once `reset` has passed)."""
        if self.last_at is None or now - self.last_at > self.reset:
            return 0
        return self.failures
