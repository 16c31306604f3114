"""keepalived (Debian package) moving a VIP between two lab hosts: the reference
row of `tandem bench failover`.

One VRRP instance, unicast between the hosts' public addresses, default timing
(advert_int 1 s, priority 100), both hosts BACKUP with nopreempt (so, like the
tandem agents, the survivor keeps the address when the crashed host returns),
no scripts. keepalived runs in the foreground inside the host's namespace; its
config, pid files and temporary config directory all live in the host's
directory, nothing under /run or /etc.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tandem.errors import LabError
from tandem.lab.lab import Lab

KEEPALIVED = "/usr/sbin/keepalived"
PROC = "keepalived"


def config_text(lab: Lab, host: str, peer: str, vip: str, vrid: int, advert_int: int = 1,
                priority: int = 100, tmp_dir: Path | None = None) -> str:
    tmp = f"    tmp_config_directory {tmp_dir}\n" if tmp_dir else ""
    return f"""# written by tandem bench failover (lab {lab.spec.name}, host {host})
global_defs {{
    router_id {lab.spec.name}-{host}
{tmp}}}

vrrp_instance {lab.spec.name}_vip {{
    state BACKUP
    nopreempt
    interface pub0
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert_int}
    unicast_src_ip {lab.address(host)}
    unicast_peer {{
        {lab.address(peer)}
    }}
    virtual_ipaddress {{
        {vip}/24 dev pub0
    }}
}}
"""


class LabKeepalived:
    """keepalived on two hosts of a lab, sharing one VIP."""

    def __init__(self, lab: Lab, hosts: tuple[str, str], vip: str, vrid: int | None = None,
                 advert_int: int = 1, priority: int = 100):
        if shutil.which(KEEPALIVED) is None and not Path(KEEPALIVED).exists():
            raise LabError("keepalived is missing (Debian package keepalived)")
        self.lab = lab
        self.hosts = hosts
        self.vip = vip
        self.vrid = vrid or (lab.spec.octet % 250) + 1
        self.advert_int = advert_int
        self.priority = priority

    def paths(self, host: str) -> dict[str, Path]:
        d = self.lab.host_dir(host)
        run = d / "run" / "keepalived"
        return {"conf": d / "etc" / "keepalived.conf", "run": run, "tmp": run / "tmp",
                "pid": run / "keepalived.pid", "vrrp_pid": run / "vrrp.pid",
                "checkers_pid": run / "checkers.pid", "bfd_pid": run / "bfd.pid",
                "log": d / "log" / f"{PROC}.log"}

    def argv(self, host: str) -> list[str]:
        p = self.paths(host)
        return [KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
                "--vrrp", "--no_bfd", "--dont-respawn", "-f", str(p["conf"]), "-p", str(p["pid"]),
                "-r", str(p["vrrp_pid"]), "-c", str(p["checkers_pid"]), "-b", str(p["bfd_pid"])]

    def start(self, host: str) -> int:
        """Write the config and start keepalived on `host`; return the log offset
        from which this instance's messages start."""
        peer = next(h for h in self.hosts if h != host)
        p = self.paths(host)
        p["tmp"].mkdir(parents=True, exist_ok=True)
        for k in ("pid", "vrrp_pid", "checkers_pid", "bfd_pid"):
            p[k].unlink(missing_ok=True)  # stale after a crash
        p["conf"].write_text(config_text(self.lab, host, peer, self.vip, self.vrid, self.advert_int,
                                         self.priority, p["tmp"]))
        check = self.lab.run(host, [KEEPALIVED, "--config-test", "-f", str(p["conf"])], check=False)
        if check.returncode != 0:
            raise LabError(f"{host}: keepalived config test failed: {(check.stderr or check.stdout)[-300:]}")
        offset = p["log"].stat().st_size if p["log"].exists() else 0
        self.lab.spawn(host, PROC, self.argv(host))
        return offset

    def log_since(self, host: str, offset: int) -> str:
        try:
            with open(self.paths(host)["log"], "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def holder(self) -> str | None:
        """The host that has the VIP on its interface (None if none; error if two)."""
        have = []
        for h in self.hosts:
            if h in self.lab.read_state()["down"]:
                continue
            out = self.lab.run(h, ["ip", "-j", "-4", "addr", "show", "dev", "pub0"], check=False).stdout
            addrs = [a.get("local") for link in json.loads(out or "[]") for a in link.get("addr_info", [])]
            if self.vip in addrs:
                have.append(h)
        if len(have) > 1:
            raise LabError(f"keepalived: VIP {self.vip} on {', '.join(have)} at once")
        return have[0] if have else None

    def mac(self, host: str) -> str:
        out = self.lab.run(host, ["ip", "-j", "link", "show", "dev", "pub0"]).stdout
        return json.loads(out)[0]["address"]

    def stop(self) -> None:
        for h in self.hosts:
            if self.lab.supervisor(h).get(PROC):
                self.lab.stop(h, PROC, timeout=5)
