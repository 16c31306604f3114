"""A virtual IP address on an interface of the current network namespace.

The agent runs inside its node (in the lab: the host's namespace), so ``ip``
acts on that node's interfaces. Start adds the address and announces it with
gratuitous ARP (``arping -U``: unsolicited ARP requests with the VIP as
sender and target, which update existing neighbour entries — Linux accepts
them even within its 1 s locktime). The arping runs detached: its first
packet leaves at once, the second a second later (to catch a neighbour that
missed the first), and the start does not wait those seconds, because the
VIP move is on the failover's critical path. So that the start does not
return before the first announcement is out (arping takes a few ms to start,
more on a loaded machine, and a packet sent in that gap goes to the old
holder), start also sends one gratuitous ARP itself, synchronously, on a raw
packet socket. Stop kills a still-running
arping first (remembered by pid in the run dir): a late announcement from the
old holder would pull the neighbours' caches back to it after the move.

With a ``lifetime`` the address is added with that valid/preferred lifetime
and :meth:`Vip.refresh` (called by the agent on every lease renewal) extends
it: the kernel itself removes the address when the agent stops renewing (a
SIGSTOPped or wedged agent can remove nothing, and without this it would keep
the VIP on its node forever, beside the new holder's). Lifetimes have
one-second resolution and the kernel removes an expired address a little late:
dbgroup.vip_takeover_grace has the arithmetic.

The address and its lifetime are set over rtnetlink (:mod:`rtnl`), in the same
synchronous step as the check that the lease renewal they rest on is recent enough:
no await, no ``ip`` process to fork between the two. With ``ip addr change`` in a
subprocess, a loaded machine set a lifetime a second or more after that check, and
the address outlived the takeover grace (torture 103:9: the API VIP still up 2.8 s
after its holder's last keepalive, beside the new holder's).

Monitor checks that the address is present and the link has carrier; stop
removes the address. Deciding that only one node holds the VIP is the
cluster's job (leader lease, fencing), not this resource's; :func:`holders`
is the checker's probe of that invariant in a lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tandem.cluster.resources import rtnl
from tandem.cluster.resources.base import Health, Resource, ResourceError, run_cmd
from tandem.cluster.resources.config import VipConfig
from tandem.cluster.resources.procs import ProcRef

if TYPE_CHECKING:
    from tandem.lab.lab import Lab

log = logging.getLogger(__name__)


class Vip(Resource):
    kind = "vip"
    config: VipConfig

    def __init__(self, config: VipConfig):
        super().__init__(config)
        self._arping: subprocess.Popen | None = None
        # refresh() runs from the lease loop, beside start/stop in the main loop:
        # `ip addr change` ADDS a missing address, so it may only run while this
        # resource has the address up, never across a stop.
        self._lock = asyncio.Lock()
        self._up = False
        #: CLOCK_MONOTONIC time before which start() must not add the address (set
        #: by whoever just took the key, see dbgroup.vip_takeover_grace)
        self.hold_until = 0.0
        #: The lease the address rests on, asked right before a start adds it: (lease id,
        #: the latest CLOCK_MONOTONIC time its lifetime may be set at, i.e. the last
        #: renewal's send time plus VIP_REFRESH_SLACK), or why this node may not hold the
        #: address now. The agent answers from its lease, so that no path to a start (a
        #: promotion, the monitor's restart of a vanished address, the API VIP's
        #: placement) puts the address up on a lease that ran out, nor with a lifetime
        #: that outlives the takeover grace (see dbgroup). Without an agent: no limit.
        self.lease: Callable[[], tuple[int | None, float] | str] = lambda: (None, math.inf)
        self._lease_id: int | None = None  #: the lease the address was added on
        #: the last stop did not show the address gone: it may live until its lifetime
        #: ends (no refresh extends it), and the key it rests on must not be freed sooner
        self.removal_failed = False
        self._announced: tuple[float, dict] | None = None  #: (when, link) of the last announcement

    @property
    def extending(self) -> bool:
        """Renewals extend the address's lifetime (it was started and not let lapse)."""
        return self._up

    def let_lapse(self, why: str) -> None:
        """Extend the address no more: the kernel removes it when its lifetime ends,
        and only a new start puts it up again (as refresh does after a lease lapse).
        Without the lock: its one caller is the lease loop, which also makes every
        refresh, one after the other; a start under way sets the lifetime itself."""
        if self._up:
            log.warning("%s: not extending its lifetime: %s (the kernel removes the address)",
                        self.config.address.ip, why)
        self._up = False

    @property
    def _cidr(self) -> str:
        return str(self.config.address.with_prefixlen)

    def _set_address(self, latest: float) -> bool:
        """Add the address, or set its lifetime anew, unless CLOCK_MONOTONIC is past
        `latest` (the last moment a lifetime may be set on the lease renewal it rests
        on): False, nothing done. Synchronous on purpose (see the module docstring).
        An address whose setting returned after `latest` (this process descheduled in
        the call) may live too long: it is removed again, and ResourceError raised."""
        c = self.config
        if time.monotonic() > latest:
            return False
        try:
            # Also adds a missing address (as `ip addr change` did): the callers hold
            # self._lock and know the address is meant to be up.
            rtnl.set_address(c.interface, str(c.address.ip), c.address.network.prefixlen, c.lifetime)
        except OSError as e:
            raise ResourceError(f"setting {self._cidr} on {c.interface}: {e}") from e
        late = time.monotonic() - latest
        if late > 0:
            with contextlib.suppress(OSError):
                rtnl.delete_address(c.interface, str(c.address.ip), c.address.network.prefixlen)
            raise ResourceError(f"removed {self._cidr} again: its lifetime was set up to {late:.2f} s"
                                " after the lease renewal allowed")
        return True

    async def _link(self) -> dict:
        res = await run_cmd(["ip", "-j", "addr", "show", "dev", self.config.interface], timeout=5,
                            check=False)
        if res.returncode != 0:
            raise ResourceError(f"interface {self.config.interface}: {res.last_line}")
        return json.loads(res.output)[0]

    async def _present(self) -> tuple[bool, dict]:
        link = await self._link()
        ip = str(self.config.address.ip)
        have = any(a.get("local") == ip for a in link.get("addr_info", []))
        return have, link

    def _reap_arping(self) -> None:
        if self._arping is not None and self._arping.poll() is not None:
            self._arping = None

    def _silence(self) -> None:
        """Kill an announcing arping of ours that is still running."""
        self._reap_arping()
        refs = [ProcRef.of(self._arping.pid)] if self._arping is not None else []
        st = self.load_state() if self.config.run_dir else None
        if st:
            refs.append(ProcRef.from_json(st))
        for ref in refs:
            if ref is not None:
                ref.signal(signal.SIGKILL)
        if self._arping is not None:
            self._arping.wait(1)
            self._arping = None
        if self.config.run_dir:
            self.clear_state()

    def _garp_now(self, link: dict) -> None:
        """One unsolicited ARP request (what ``arping -U`` sends), right now."""
        mac = bytes.fromhex(link["address"].replace(":", ""))
        ip = self.config.address.ip.packed
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\xff" * 6 + ip
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((self.config.interface, 0))
            sock.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)

    def _announce(self, link: dict) -> str:
        n = self.config.arp_count
        if n == 0:
            return "no gratuitous ARP (arp_count = 0)"
        self._garp_now(link)
        self._announced = (time.monotonic(), link)
        self._silence()
        self._arping = subprocess.Popen(
            ["arping", "-q", "-U", "-c", str(n), "-I", self.config.interface, str(self.config.address.ip)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        ref = ProcRef.of(self._arping.pid)
        if self.config.run_dir and ref is not None:
            self.save_state(ref.to_json())
        return f"announced with {n} gratuitous ARP{'s' if n > 1 else ''}"

    async def _start(self) -> str:
        c = self.config
        wait = self.hold_until - time.monotonic()
        if wait > 0:  # the previous holder's address may still be alive: let it expire
            await asyncio.sleep(min(wait, 5.0))
        async with self._lock:
            have, link = await self._present()
            while True:
                lease_id, latest = await self._fresh_lease()
                if self._set_address(latest):
                    break
            self._up, self._lease_id = True, lease_id
            after = self.lease()
            if isinstance(after, str) or after[0] != lease_id:
                # Paused during `ip` (or it was slow) past the lease: announcing now would
                # pull the neighbours to an address the new holder may have up already.
                self._up = False
                await run_cmd(["ip", "addr", "del", self._cidr, "dev", c.interface], timeout=5, check=False)
                raise ResourceError(f"not announcing {self._cidr}: the lease ran out while adding it")
        return (f"{self._cidr} already on {c.interface}, " if have else
                f"added {self._cidr} to {c.interface}, ") + self._announce(link)

    async def _fresh_lease(self, wait: float = 2.0) -> tuple[int | None, float]:
        """The lease to add the address on and the latest time its lifetime may be set,
        once a renewal recent enough to set it from has come (renewals come every
        TTL/4: normally at once)."""
        give_up = time.monotonic() + wait
        while True:
            lease = self.lease()
            if isinstance(lease, str):
                raise ResourceError(f"not adding {self._cidr}: {lease}")
            if time.monotonic() <= lease[1]:
                return lease
            if time.monotonic() >= give_up:
                raise ResourceError(f"not adding {self._cidr}: no lease renewal in {wait:g} s to rest"
                                    " its lifetime on")
            await asyncio.sleep(0.02)

    async def refresh(self, valid_until: float | None = None, lease_id: int | None = None) -> bool:
        """Extend the address's lifetime (and re-announce it, see `garp_refresh`) while
        this resource holds it up; False only
        when that failed (an address this node does not hold has nothing to extend:
        the agent asked every replica's VIPs at each renewal and logged a failure
        four times a second, 80% of a replica's log).

        `valid_until` (CLOCK_MONOTONIC): after it, the renewal this refresh rests on
        is too old to vouch for it, and nothing is extended. `ip addr change` puts
        back an address the kernel already expired: an agent SIGSTOPped between its
        lease renewal and this refresh resumed 1.8 s after its lease ended and put
        the DB VIP back beside the new holder's for a second (torture 64:47).
        `lease_id`: the lease renewed; an address added on another one (before a
        lapse: its keys are gone) is never extended again, only a new start puts it
        up (torture 73:103, and the second renewal after a lapse).

        While a start or stop holds the lock, nothing is done: the start sets the
        lifetime itself, the stop removes the address. Waiting for it held up the
        agent's lease loop, whose next renewal a start behind a slow `ip` waits for:
        the start gave up after 2 s and the promotion failed (review, session 20)."""
        if self._lock.locked():
            return True
        async with self._lock:
            if not self._up:
                return True
            why_not = self.lease()
            if isinstance(why_not, str):  # e.g. the leader key is gone, whatever our lease says
                log.warning("%s: not extending its lifetime: %s (the kernel removes the address)",
                            self.config.address.ip, why_not)
                self._up = False
                return True
            if lease_id is not None and self._lease_id is not None and lease_id != self._lease_id:
                log.warning("%s: not extending its lifetime: it was added on lease %x, this renewal"
                            " is of lease %x (the kernel removes the address)", self.config.address.ip,
                            self._lease_id, lease_id)
                self._up = False
                return True
            if self.config.lifetime is None:  # nothing to extend
                self._reannounce()
                return True
            latest = math.inf if valid_until is None else valid_until
            try:
                if not self._set_address(latest):
                    log.warning("%s: not extending its lifetime: the lease renewal it rests on is"
                                " %.2f s too old (the kernel removes the address unless a timely"
                                " renewal extends it)", self.config.address.ip,
                                time.monotonic() - latest)
                    return True
            except ResourceError as e:
                log.warning("%s: %s", self.config.address.ip, e)
                self._up = False
                return False
            self._reannounce()
            return True

    def _reannounce(self) -> None:
        """A gratuitous ARP every `garp_refresh` seconds while held (see the config)."""
        every, last = self.config.garp_refresh, self._announced
        if not every or last is None or time.monotonic() - last[0] < every:
            return
        self._announced = (time.monotonic(), last[1])
        with contextlib.suppress(OSError):
            self._garp_now(last[1])

    async def _stop(self) -> str:
        c = self.config
        self._silence()
        async with self._lock:
            self._up = False
            self._announced = None
            self.removal_failed = True  # until shown otherwise (a stop that raises or times out)
            have, _ = await self._present()
            if have:
                await run_cmd(["ip", "addr", "del", self._cidr, "dev", c.interface], timeout=5)
            self.removal_failed = False
        if not have:
            return f"{c.address.ip} was not on {c.interface}"
        return f"removed {self._cidr} from {c.interface}"

    async def _monitor(self) -> Health:
        c = self.config
        self._reap_arping()
        have, link = await self._present()
        if not have:
            return Health.stopped(f"{c.address.ip} is not on {c.interface}")
        if "LOWER_UP" not in link.get("flags", []):
            return Health.failed(f"{c.address.ip} is on {c.interface}, but the link has no carrier")
        return Health.ok(f"{c.address.ip} is on {c.interface}")


def holders(lab: Lab, address: str) -> list[str]:
    """The lab hosts that have `address` on any interface now (for the
    checker's "at most one holder of each VIP" invariant)."""
    found = []
    for host in lab.spec.host_names:
        proc = lab.run(host, ["ip", "-j", "-4", "addr", "show"], check=False, timeout=10)
        if proc.returncode != 0:
            continue
        for link in json.loads(proc.stdout or "[]"):
            if any(a.get("local") == address for a in link.get("addr_info", [])):
                found.append(host)
                break
    return found
