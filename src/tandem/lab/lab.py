"""Bring a lab up and down, and run things on its hosts.

A lab is a set of network namespaces ("hosts") plugged into two bridges, a
public and a dedicated replication network, each host with its own directory.
`up` records the lab in `<root>/<lab>/lab.json` so that later commands (and
other processes) can find it; `down` removes everything the lab created,
including what a half-finished `up` or a crashed test left behind, found by the
lab's name prefix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tandem.errors import LabError
from tandem.lab.events import EventLog
from tandem.lab.shell import in_ns, ns_prefix, run
from tandem.lab.supervisor import Supervisor, pids_in_netns
from tandem.lab.topology import (
    DEFAULT_ROOT,
    NET_IFNAME,
    HostSpec,
    LabSpec,
    check_lab_name,
    default_hosts,
    preferred_octet,
)
from tandem.volume.fuse_stack import set_write_through


def lab_root() -> Path:
    return Path(os.environ.get("TANDEM_LAB_ROOT", str(DEFAULT_ROOT)))


def _used_octets() -> set[int]:
    """The 10.B.x.x ranges already routed on this machine (other labs, anything)."""
    used = set()
    out = run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    out += run(["ip", "-4", "route", "show"], check=False).stdout
    for word in out.split():
        if word.startswith("10."):
            parts = word.split("/")[0].split(".")
            if len(parts) == 4 and parts[1].isdigit():
                used.add(int(parts[1]))
    return used


class Lab:
    """A running lab, loaded from its state file."""

    def __init__(self, spec: LabSpec):
        self.spec = spec
        self.events = EventLog(spec.event_file)
        self._supervisors: dict[str, Supervisor] = {}
        from tandem.lab.faults import Faults
        self.faults = Faults(self)

    # --- life cycle --------------------------------------------------------------
    @classmethod
    def up(cls, name: str, hosts: Sequence[HostSpec] | None = None,
           root: Path | None = None) -> Lab:
        check_lab_name(name)
        root = root or lab_root()
        if (root / name / "lab.json").exists():
            raise LabError(f"lab {name} is already up (see `tandem lab status {name}`;"
                           f" `tandem lab down {name}` removes it)")
        leftovers = [ns for ns in _netns_list() if ns.startswith(f"{name}-")]
        if leftovers:
            raise LabError(f"lab {name}: namespaces {', '.join(leftovers)} are left over;"
                           f" run `tandem lab down {name}` first")
        used = _used_octets()
        octet = preferred_octet(name)
        for _ in range(100):
            if octet not in used:
                break
            octet = 100 + (octet - 99) % 100
        else:
            raise LabError("no free 10.B.0.0/16 range for a lab (100..199 all in use)")
        spec = LabSpec(name=name, octet=octet, root=root,
                       hosts=tuple(hosts) if hosts else tuple(default_hosts()))
        lab = cls(spec)
        try:
            lab._create()
        except BaseException:
            cls.down_by_name(name, root)
            raise
        return lab

    @classmethod
    def load(cls, name: str, root: Path | None = None) -> Lab:
        check_lab_name(name)
        root = root or lab_root()
        path = root / name / "lab.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"lab {name} is not up (no {path}; start it with"
                           f" `tandem lab up {name}`)") from None
        return cls(LabSpec.from_json(data["spec"]))

    def _create(self) -> None:
        s = self.spec
        s.dir.mkdir(parents=True, exist_ok=True)
        for h in s.hosts:
            for sub in ("data", "etc", "run", "log"):
                (s.host_dir(h.name) / sub).mkdir(parents=True, exist_ok=True)
        for net in ("public", "replication"):
            br = s.bridge(net)
            run(["ip", "link", "add", br, "type", "bridge"])
            # No STP and no forwarding delay: ports forward the moment they are up.
            run(["ip", "link", "set", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
            run(["ip", "link", "set", br, "up"])
        run(["ip", "addr", "add", f"{s.gateway()}/24", "dev", s.bridge("public")])
        for h in s.hosts:
            ns = s.netns(h.name)
            run(["ip", "netns", "add", ns])
            in_ns(ns, ["ip", "link", "set", "lo", "up"])
            for net in h.networks:
                outer, inner_tmp = s.veth_root(h.name, net), f"{s.veth_root(h.name, net)}x"
                run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner_tmp])
                run(["ip", "link", "set", inner_tmp, "netns", ns])
                in_ns(ns, ["ip", "link", "set", inner_tmp, "name", NET_IFNAME[net]])
                in_ns(ns, ["ip", "addr", "add", f"{s.address(h.name, net)}/24",
                           "dev", NET_IFNAME[net]])
                in_ns(ns, ["ip", "link", "set", NET_IFNAME[net], "up"])
                run(["ip", "link", "set", outer, "master", s.bridge(net)])
                run(["ip", "link", "set", outer, "up"])
        self._write_state({"spec": s.to_json(), "blocks": [], "slow": {}, "down": []})
        self.faults.apply_partitions()
        self.events.record("lab_up", lab=s.name, hosts=s.host_names)

    def down(self) -> None:
        self.events.record("lab_down", lab=self.spec.name)
        Lab.down_by_name(self.spec.name, self.spec.root)

    @staticmethod
    def down_by_name(name: str, root: Path | None = None, keep_dir: bool = False) -> list[str]:
        """Remove every trace of lab `name`; works on a half-built or crashed lab.
        Returns what was removed, for the operator."""
        check_lab_name(name)
        root = root or lab_root()
        lab_dir = root / name
        removed: list[str] = []
        namespaces = [ns for ns in _netns_list() if ns.startswith(f"{name}-")]
        for ns in namespaces:
            for pid in pids_in_netns(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                    removed.append(f"pid {pid}")
        for ns in namespaces:
            _wait_netns_empty(ns)
        removed += _release_storage(lab_dir)
        for ns in namespaces:
            run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
        for link in _links_with_prefix(f"{name}-"):
            run(["ip", "link", "del", link], check=False)
            removed.append(f"link {link}")
        if run(["nft", "list", "table", "bridge", f"tandem_{name}"], check=False).returncode == 0:
            run(["nft", "delete", "table", "bridge", f"tandem_{name}"], check=False)
            removed.append(f"nft table tandem_{name}")
        if lab_dir.exists() and not keep_dir:
            shutil.rmtree(lab_dir, ignore_errors=True)
            removed.append(f"dir {lab_dir}")
        elif lab_dir.exists():
            (lab_dir / "lab.json").unlink(missing_ok=True)
        return removed

    # --- state shared between commands -------------------------------------------
    @contextlib.contextmanager
    def state(self) -> Iterator[dict]:
        """Read-modify-write the lab state under an exclusive lock."""
        lock = self.spec.dir / "lab.lock"
        with open(lock, "a") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                data = self._read_state()
                yield data
                self._write_state(data)
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def _read_state(self) -> dict:
        try:
            return json.loads(self.spec.state_file.read_text())
        except FileNotFoundError:
            raise LabError(f"lab {self.spec.name} is down") from None

    def read_state(self) -> dict:
        return self._read_state()

    def _write_state(self, data: dict) -> None:
        tmp = self.spec.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.spec.state_file)

    # --- hosts -------------------------------------------------------------------
    def supervisor(self, host: str) -> Supervisor:
        if host not in self._supervisors:
            self.spec.host(host)
            self._supervisors[host] = Supervisor(host, self.spec.netns(host),
                                                 self.spec.host_dir(host))
        return self._supervisors[host]

    def address(self, host: str, net: str = "public") -> str:
        return str(self.spec.address(host, net))  # type: ignore[arg-type]

    def host_dir(self, host: str) -> Path:
        return self.spec.host_dir(host)

    def env(self, host: str) -> dict[str, str]:
        return {"TANDEM_LAB": self.spec.name, "TANDEM_LAB_HOST": host,
                "TANDEM_LAB_ROOT": str(self.spec.root),
                "TANDEM_LAB_EVENTS": str(self.spec.event_file)}

    def run(self, host: str, cmd: Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside a host and capture its output."""
        self.spec.host(host)
        try:
            proc = subprocess.run([*ns_prefix(self.spec.netns(host)), *cmd], input=input,
                                  capture_output=True, text=True, timeout=timeout,
                                  cwd=self.spec.host_dir(host), env={**os.environ, **self.env(host)})
        except subprocess.TimeoutExpired:
            raise LabError(f"{host}: {' '.join(cmd)} timed out after {timeout}s") from None
        if check and proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            raise LabError(f"{host}: {' '.join(cmd)}: {err[-1] if err else proc.returncode}")
        return proc

    def exec(self, host: str, cmd: Sequence[str]) -> int:
        """Run a command inside a host with the caller's terminal (for `lab exec`)."""
        self.spec.host(host)
        try:
            return subprocess.call([*ns_prefix(self.spec.netns(host)), *cmd],
                                   cwd=self.spec.host_dir(host),
                                   env={**os.environ, **self.env(host)})
        except FileNotFoundError:
            raise LabError(f"{host}: {cmd[0]}: command not found") from None

    def spawn(self, host: str, name: str, cmd: Sequence[str],
              env: Mapping[str, str] | None = None):
        rec = self.supervisor(host).start(name, cmd, env={**self.env(host), **(env or {})})
        self.events.record("proc_start", host=host, name=name, pid=rec.pid)
        return rec

    def stop(self, host: str, name: str, timeout: float = 10.0) -> int | None:
        code = self.supervisor(host).stop(name, timeout)
        self.events.record("proc_stop", host=host, name=name, code=code)
        return code

    # --- status ------------------------------------------------------------------
    def status(self) -> dict:
        st = self._read_state()
        hosts = []
        for h in self.spec.hosts:
            sup = self.supervisor(h.name)
            procs = [{"name": r.name, "pid": r.pid,
                      "running": sup.alive(r)} for r in sup.records()]
            hosts.append({
                "name": h.name,
                "netns": self.spec.netns(h.name),
                "addresses": {n: str(self.spec.address(h.name, n)) for n in h.networks},
                "links": "down" if h.name in st["down"] else "up",
                "processes": procs,
            })
        return {"lab": self.spec.name, "dir": str(self.spec.dir),
                "networks": {n: str(self.spec.subnet(n)) for n in ("public", "replication")},
                "hosts": hosts, "partitions": st["blocks"], "slow": st["slow"]}


def _netns_list() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links_with_prefix(prefix: str) -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                names.append(name)
    # Veths before bridges, so the bridges are empty when they go.
    return sorted(names, key=lambda n: n.endswith(("-pub", "-rep")))


def _wait_netns_empty(ns: str, timeout: float = 5.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while pids_in_netns(ns) and time.monotonic() < deadline:
        time.sleep(0.02)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return sorted(set(found), key=lambda m: -m.count("/"))


def loops_backed_under(path: Path) -> list[str]:
    out = run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], check=False).stdout
    prefix = str(path.resolve()) if path.exists() else str(path)
    devs = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(prefix + "/"):
            devs.append(parts[0])
    return devs


def _mount_sources() -> dict[str, str]:
    """mount point -> mounted device, from /proc/self/mountinfo."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out[fields[4].replace("\\040", " ")] = fields[sep + 2]
    return out


def _state_files(top: Path) -> list[Path]:
    """Resource state files below `top`, never entering a mount point (a dead FUSE
    mount answers every look with ENOTCONN)."""
    found = []
    for root, dirs, files in os.walk(top, onerror=lambda e: None):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
        found += [Path(root) / f for f in files if f == "state.json"]
    return found


def _release_storage(lab_dir: Path) -> list[str]:
    """Unmount what is mounted under the lab and detach its loop devices, in the
    order a crashed machine's kernel would lose them: ext4 on loop, the loop
    devices, then the FUSE files under them. The loop devices are found first:
    once a FUSE mount is gone their backing path no longer names the lab."""
    removed = []
    loops = loops_backed_under(lab_dir)
    sources = _mount_sources()
    # A loop whose FUSE file was already torn away shows a bare "/disk" as backing
    # file; it is still ours if it is mounted inside the lab.
    prefix = str(lab_dir.resolve()) if lab_dir.exists() else str(lab_dir)
    loops += [src for mp, src in sources.items()
              if src.startswith("/dev/loop") and src not in loops
              and (mp == prefix or mp.startswith(prefix + "/"))]
    # ... and so is a loop the lab's filesystem resources recorded attaching.
    attached = {line.split(None, 1)[0]: (line.split(None, 1) + [""])[1].strip() for line in
                run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], check=False).stdout.splitlines()
                if line.strip()}
    from tandem.cluster.resources.filesystem import recorded_loop_is_current
    for state in _state_files(lab_dir / "hosts"):
        try:
            st = json.loads(state.read_text())
            dev = st.get("loop")
        except (OSError, ValueError, AttributeError):
            continue
        # Only while it is still the attach the resource recorded: a stale record's
        # loop number may now be another lab's loop, also backed by a torn "/disk".
        if dev in attached and dev not in loops and recorded_loop_is_current(
                st, lambda back: back is not None and (back == "/disk" or back.startswith(prefix + "/"))):
            loops.append(dev)
    for mp in mounts_under(lab_dir):
        if sources.get(mp) in loops and run(["umount", mp], check=False, timeout=10).returncode != 0:
            run(["umount", "-l", mp], check=False, timeout=10)
        removed.append(f"mount {mp}")
    for dev in loops:
        with contextlib.suppress(OSError, RuntimeError):  # a write-through mark outlives the detach
            set_write_through(dev, False)
        run(["losetup", "-d", dev], check=False)
        removed.append(f"loop {dev}")
    for _ in range(3):
        mps = mounts_under(lab_dir)
        if not mps:
            break
        for mp in mps:
            if run(["umount", mp], check=False, timeout=10).returncode != 0:
                run(["umount", "-l", mp], check=False, timeout=10)
            removed.append(f"mount {mp}")
    return removed


def release_host_storage(host_dir: Path) -> list[str]:
    return _release_storage(host_dir)
