"""`tandem bench volume`: the replicated volume against the local disk and
MariaDB semi-sync, measured side by side in one run on this machine.

A private lab (default name ``bench``) is brought up and always torn down. In it:

* a two-node tandem volume, Primary on node1 replicating to node2 over the lab's
  replication network, with ext4 on loop(direct-io) on the Primary's FUSE file;
* MariaDB instances that differ only in where their data lives:
  (a) ``local``   datadir on this machine's ext4 (a directory under /var/tmp),
  (b) ``tandem``  datadir on ext4 on the tandem volume,
  (c) ``semisync`` datadir on local ext4, semi-sync replication (AFTER_SYNC) to a
      replica in node2 over the same replication network.
  Every durability and sizing option comes from one list applied to all three
  (see :data:`tandem.bench.mariadb.COMMON_OPTIONS`).

Measured: sysbench ``oltp_insert`` commits/s (autocommit, 1 and 8 threads);
fio 4 KiB random writes with O_DIRECT + fsync after each write, and 1 MiB
sequential O_DIRECT writes, on (a) and (b); resync throughput against a raw TCP
copy of the same bytes over the same link; and the time of a bitmap resync of
1% changed 4 KiB blocks against a full sync of the whole volume, next to what
node2's disk alone needs to write those blocks durably (the floor of that
resync). The resync clock runs from the end of the handshake (SyncTarget) to
the target's UpToDate on disk; "wall" adds the reconnect and the source's end.

This is a benchmark, not a test: it asserts nothing, it prints ratios and
whether the targets of issue 4 are met.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.bench import repl_floor
from tandem.bench.mariadb import (
    COMMON_OPTIONS,
    BenchError,
    MariaDB,
    setup_semisync,
    sysbench_insert,
    sysbench_prepare,
)
from tandem.cluster.resources.config import EXT4_FEATURES
from tandem.lab.clusterconf import host_env, tandem_argv, write_cluster_config
from tandem.lab.lab import Lab
from tandem.lab.shell import ns_prefix
from tandem.volume import control
from tandem.volume.fuse_stack import ext4_mount, loop_device

MiB = 1 << 20
PARTS = ("sysbench", "fio", "floor", "resync")
TARGETS = {"sysbench_1t_ratio": 0.5, "resync_vs_raw": 0.8, "resync_1pct_vs_full": 0.03}
FIO_COMMON = ("--ioengine=psync", "--direct=1", "--fallocate=none", "--time_based",
              "--output-format=json")
FIO_JOBS = {
    "fio_4k_sync_randwrite": ("--rw=randwrite", "--bs=4k", "--fsync=1", "--size=128M"),
    "fio_1m_seq_write": ("--rw=write", "--bs=1M", "--size=256M", "--end_fsync=1"),
}
EXT4_MKFS = ("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")


@dataclass
class BenchOptions:
    lab: str = "bench"
    seconds: int = 20
    fio_seconds: int = 15
    threads: tuple[int, ...] = (1, 8)
    rounds: int = 4
    preallocate: bool = True  # backing files written with zeros before `volume create`
    volume_size: str = "1GiB"
    parts: tuple[str, ...] = PARTS
    semisync: bool = True
    ext4_options: str = ""  # extra mount options for ext4 on the volume (documented)
    cache: str = "write-through"  # the volume's cache mode (config.Volume.cache)
    mkfs_features: str = ",".join(EXT4_FEATURES)  # the volume's mkfs -O: the agent's by default
    floor_writes: int = 4000  # 4 KiB writes per kind in the floor part (repl_floor)


@dataclass
class VolumeNodes:
    """The two volume daemons of the lab, driven through the real CLI + control socket."""

    lab: Lab
    size: str
    cache: str = "write-through"
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = write_cluster_config(self.lab, volume_size=self.size, ping_timeout=0.5,
                                           cache=self.cache)

    def env(self, host: str) -> dict[str, str]:
        return host_env(self.lab, host, self.config)

    def tandem(self, host: str, *args: str) -> str:
        proc = subprocess.run([*ns_prefix(self.lab.spec.netns(host)), *tandem_argv(*args)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, **self.env(host)})
        if proc.returncode != 0:
            raise BenchError(f"{host}: tandem {' '.join(args)}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def sock(self, host: str) -> Path:
        return self.lab.host_dir(host) / "run" / "volume-db.sock"

    def call(self, host: str, cmd: str, **kw: Any) -> Any:
        return control.call(self.sock(host), cmd, timeout=300, **kw)

    def status(self, host: str) -> dict[str, Any]:
        return self.call(host, "status")

    def device(self, host: str = "node1") -> Path:
        return self.lab.host_dir(host) / "run" / "volume-db" / "disk"

    def backing(self, host: str) -> Path:
        return self.lab.host_dir(host) / "data" / "db.img"

    def up(self, preallocate: bool) -> None:
        for h in ("node1", "node2"):
            self.tandem(h, "volume", "create", "db", *(["--preallocate"] if preallocate else []))
            self.lab.spawn(h, "volume-db", tandem_argv("volume", "up", "db"), env=self.env(h))
        for h in ("node1", "node2"):
            wait(lambda h=h: self._alive(h), 30, f"{h} volume daemon")

    def _alive(self, host: str) -> bool:
        try:
            self.status(host)
            return True
        except (control.ControlError, OSError):
            return False

    def in_sync(self) -> bool:
        a, b = self.status("node1"), self.status("node2")
        return all(s["peer"]["connection"] == "Connected" and s["disk"] == "UpToDate"
                   and s["peer"]["disk"] == "UpToDate" for s in (a, b))

    def down(self) -> None:
        for h in ("node2", "node1"):
            if self.lab.supervisor(h).get("volume-db"):
                self.lab.stop(h, "volume-db", timeout=20)


def _zero_fill(path: Path, size: int) -> None:
    """A thick-provisioned backing file: every block allocated and written, so the
    host file system never allocates (and journals) under a replicated write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        zero = bytes(4 * MiB)
        for off in range(0, size, len(zero)):
            os.pwrite(fd, zero[: min(len(zero), size - off)], off)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def mount_options(path: Path) -> str:
    """Type and options of the filesystem holding ``path``, and whether an ext4 one
    has a journal: a journal-less local disk pays no journal writes per commit, the
    volume's ext4 always does (it is mounted without fsck after a failover)."""
    proc = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS,SOURCE", "-T", str(path)],
                          capture_output=True, text=True)
    fields = proc.stdout.split()
    if len(fields) < 3:
        return proc.stdout.strip()
    fstype, options, source = fields[0], fields[1], fields[2]
    desc = f"{fstype} {options}"
    if fstype == "ext4" and source.startswith("/dev/"):
        journal = Path("/proc/fs/jbd2") / f"{source.rsplit('/', 1)[-1]}-8"
        desc += "" if journal.exists() else " (no journal)"
    return desc


# --------------------------------------------------------------------------- fio
def fio(job: str, directory: Path, seconds: int) -> dict[str, float]:
    cmd = ["fio", f"--name={job}", f"--filename={directory}/{job}.dat", *FIO_COMMON,
           *FIO_JOBS[job], f"--runtime={seconds}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 600)
    if proc.returncode != 0:
        raise BenchError(f"fio {job} in {directory}: {proc.stderr.strip()[-300:]}")
    out = proc.stdout
    w = json.loads(out[out.index("{"):])["jobs"][0]["write"]
    return {"iops": round(float(w["iops"]), 1), "mib_s": round(float(w["bw_bytes"]) / MiB, 1),
            "clat_mean_us": round(float(w["clat_ns"]["mean"]) / 1000.0, 1)}


# ------------------------------------------------------------------- raw copy
_RECEIVER = r"""
import os, socket, sys, time
addr, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
srv = socket.create_server((addr, port))
print("ready", flush=True)
c, _ = srv.accept()
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
t = time.monotonic()
fd = os.open(path, os.O_WRONLY)
buf = bytearray(1 << 20)
mv = memoryview(buf)
got = 0
while got < n:
    k = c.recv_into(mv)
    if not k:
        break
    os.pwrite(fd, mv[:k], got)
    got += k
os.fdatasync(fd)
os.close(fd)
print(got, time.monotonic() - t, flush=True)
"""

_SENDER = r"""
import os, socket, sys
addr, port, src, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
s = socket.create_connection((addr, port), source_address=(src, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
with open(path, "rb") as f:
    s.sendfile(f, 0, n)
s.close()
"""


def raw_copy(lab: Lab, src_file: Path, nbytes: int,
             after: Callable[[Path], None] | None = None) -> dict[str, float]:
    """Copy `nbytes` of `src_file` from node1 into a preallocated file on node2 over
    the replication network (sendfile -> recv_into + pwrite, fdatasync at the end).
    `after(dst)` runs on the copy before it is removed."""
    dst = lab.host_dir("node2") / "data" / "rawcopy.img"
    _zero_fill(dst, nbytes)  # preallocated, like the resync target's backing file
    dst_addr = lab.address("node2", "replication")
    recv = subprocess.Popen([*ns_prefix(lab.spec.netns("node2")), sys.executable, "-c", _RECEIVER,
                             dst_addr, "7790", str(dst), str(nbytes)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise BenchError(f"raw copy receiver failed: {recv.stderr.read()[-300:] if recv.stderr else ''}")
        lab.run("node1", [sys.executable, "-c", _SENDER, dst_addr, "7790",
                          lab.address("node1", "replication"), str(src_file), str(nbytes)],
                timeout=600)
        out, err = recv.communicate(timeout=600)
        got, secs = out.split()
        if int(got) != nbytes:
            raise BenchError(f"raw copy moved {got} of {nbytes} bytes")
        if after is not None:
            after(dst)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
        dst.unlink(missing_ok=True)
    secs_f = float(secs)
    return {"bytes": nbytes, "seconds": round(secs_f, 3),
            "mib_s": round(nbytes / MiB / secs_f, 1)}


# --------------------------------------------------------------------- resync
def _resync_wait(vol: VolumeNodes, before: int, expect: int, t0: float,
                 timeout: float = 600) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st = vol.status("node2")
        if st["stats"]["resync_bytes_received"] - before < expect:
            return None
        return st if vol.in_sync() else None

    st = wait(done, timeout, "resync to finish", interval=0.005)
    wall = time.monotonic() - t0
    rs = st.get("resync", {})
    return {"bytes": st["stats"]["resync_bytes_received"] - before,
            "seconds": rs.get("elapsed_s", wall), "wall_seconds": round(wall, 3),
            "mib_s": round((st["stats"]["resync_bytes_received"] - before) / MiB
                           / max(rs.get("elapsed_s", wall), 1e-6), 1)}


def full_sync(vol: VolumeNodes, size: int) -> dict[str, Any]:
    before = vol.status("node2")["stats"]["resync_bytes_received"]
    t0 = time.monotonic()
    vol.call("node2", "invalidate")
    return _resync_wait(vol, before, size, t0)


def changed_blocks(size: int, fraction: float) -> list[int]:
    """The 4 KiB blocks the 1% round changes (the same ones every run)."""
    nblocks = max(1, int(size // 4096 * fraction))
    return sorted(random.Random(4).sample(range(size // 4096), nblocks))


def disk_floor(path: Path, blocks: list[int]) -> dict[str, float]:
    """What node2's disk alone needs for a bitmap resync's writes: the same
    scattered 4 KiB blocks pwritten into a preallocated file, then fdatasync.
    No resync of them can be durable faster than this."""
    fd = os.open(path, os.O_WRONLY)
    try:
        data = os.urandom(4096)
        t = time.monotonic()
        for b in blocks:
            os.pwrite(fd, data, b * 4096)
        os.fdatasync(fd)
        secs = time.monotonic() - t
    finally:
        os.close(fd)
    return {"bytes": len(blocks) * 4096, "seconds": round(secs, 3),
            "mib_s": round(len(blocks) * 4096 / MiB / secs, 1)}


def partial_resync(vol: VolumeNodes, size: int, fraction: float) -> dict[str, Any]:
    """Disconnect, change `fraction` of the 4 KiB blocks at random on the Primary,
    reconnect, time the bitmap resync."""
    dev = vol.device("node1")
    fd = os.open(dev, os.O_RDWR)
    os.fsync(fd)  # nothing unflushed: the resync covers exactly what we change next
    os.close(fd)
    before = vol.status("node2")["stats"]["resync_bytes_received"]
    vol.call("node1", "disconnect")
    wait(lambda: vol.status("node1")["peer"]["connection"] != "Connected", 30, "disconnect")
    blocks = changed_blocks(size, fraction)
    nblocks = len(blocks)
    buf = mmap.mmap(-1, 4096)
    buf.write(os.urandom(4096))
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    try:
        for b in blocks:
            os.pwritev(fd, [buf], b * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()
    changed = nblocks * 4096
    t0 = time.monotonic()
    vol.call("node1", "connect")
    out = _resync_wait(vol, before, changed, t0)
    out["changed_bytes"] = changed
    out["blocks"] = nblocks
    return out


# ---------------------------------------------------------------------- the run
def _aggregate(rows: list[dict[str, float]], slice_s: int) -> dict[str, float]:
    commits = sum(r["commits"] for r in rows)
    return {"commits": commits, "seconds": slice_s * len(rows),
            "commits_per_s": round(commits / (slice_s * len(rows)), 1),
            "slices_commits_per_s": [r["commits_per_s"] for r in rows],
            "latency_avg_ms": round(statistics.median(r["latency_avg_ms"] for r in rows), 3),
            "latency_p95_ms": round(statistics.median(r["latency_p95_ms"] for r in rows), 3)}


def _vol_stats(vol: VolumeNodes) -> dict[str, int]:
    return dict(vol.status("node1")["stats"])


def run(opts: BenchOptions, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("tandem bench volume needs root (namespaces, loop, mount, FUSE)")
    for tool in ("fio", "sysbench", "mariadbd", "mariadb-install-db", "mkfs.ext4", "losetup"):
        if not _which(tool):
            raise BenchError(f"{tool} not found (run scripts/setup)")
    result: dict[str, Any] = {"options": {
        "seconds": opts.seconds, "fio_seconds": opts.fio_seconds, "threads": list(opts.threads),
        "rounds": opts.rounds, "preallocated_backing": opts.preallocate,
        "volume_size": opts.volume_size, "parts": list(opts.parts),
        "mariadb_options": list(COMMON_OPTIONS), "fio_common": list(FIO_COMMON),
        "fio_jobs": {k: list(v) for k, v in FIO_JOBS.items()},
        "mkfs": " ".join(_mkfs_argv(opts)), "ext4_extra_mount_options": opts.ext4_options,
        "volume_cache": opts.cache}}
    say(f"lab {opts.lab}: up")
    lab = Lab.up(opts.lab)
    dbs: list[MariaDB] = []
    vol: VolumeNodes | None = None
    try:
        with contextlib.ExitStack() as stack:
            vol = VolumeNodes(lab, opts.volume_size, opts.cache)
            say("volume: create, up, promote node1, initial full sync")
            vol.up(opts.preallocate)
            t0 = time.monotonic()
            vol.tandem("node1", "volume", "primary", "db", "--force")
            wait(vol.in_sync, 600, "initial sync")
            size = vol.status("node1")["size"]
            result["initial_sync_s"] = round(time.monotonic() - t0, 3)
            n1 = lab.host_dir("node1") / "data"
            mnt = n1 / "mnt"
            mnt.mkdir(parents=True, exist_ok=True)
            loop = stack.enter_context(loop_device(
                str(vol.device("node1")), write_through=opts.cache == "write-through"))
            made = subprocess.run([*_mkfs_argv(opts), loop], capture_output=True, text=True,
                                  timeout=300)
            if made.returncode != 0:
                raise BenchError(f"mkfs.ext4 on the volume ({' '.join(_mkfs_argv(opts))}):"
                                 f" {made.stderr.strip()[-300:]} (check --mkfs-features)")
            stack.enter_context(_ext4(loop, str(mnt), opts.ext4_options))
            stack.callback(_stop_all, dbs)  # before the unmount, whatever happens
            local_dir = n1 / "local"
            local_dir.mkdir(parents=True, exist_ok=True)
            result["filesystems"] = {"local": mount_options(local_dir),
                                     "tandem": mount_options(mnt)}
            if "sysbench" in opts.parts:
                result["sysbench"] = _sysbench(lab, vol, dbs, local_dir, mnt, opts, say)
                _stop_all(dbs)
            if "fio" in opts.parts:
                result["fio"] = _fio(local_dir, mnt, opts, say)
        # ext4 unmounted, loop detached: the FUSE file is free for the floor and resync runs
        if "floor" in opts.parts:
            say(f"floor: {opts.floor_writes} 4 KiB writes per kind, local / replicated by the"
                " simplest programs / the volume")
            result["floor"] = repl_floor.measure(lab, opts.floor_writes, opts.rounds,
                                                 vol.device("node1"))
        if "resync" in opts.parts:
            result["resync"] = _resync(lab, vol, size, say)
    finally:
        say(f"lab {opts.lab}: down")
        for db in dbs:
            with contextlib.suppress(Exception):
                db.stop()
        if vol is not None:
            with contextlib.suppress(Exception):
                vol.down()
        Lab.down_by_name(opts.lab)
    result["summary"] = summarize(result)
    return result


def _mkfs_argv(opts: BenchOptions) -> tuple[str, ...]:
    return EXT4_MKFS + (("-O", opts.mkfs_features) if opts.mkfs_features else ())


@contextlib.contextmanager
def _ext4(device: str, mountpoint: str, options: str) -> Iterator[str]:
    if not options:
        with ext4_mount(device, mountpoint) as m:
            yield m
        return
    mounted = subprocess.run(["mount", "-t", "ext4", "-o", options, device, mountpoint],
                             capture_output=True, text=True, timeout=60)
    if mounted.returncode != 0:
        said = (mounted.stderr.strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"--ext4-options {options!r}: mount refused them ({said}); the kernel's"
                         f" reason is in dmesg (journal_async_commit, for one, needs data=writeback)")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)


def _stop_all(dbs: list[MariaDB]) -> None:
    for db in dbs:
        with contextlib.suppress(Exception):
            db.stop()


def _which(tool: str) -> bool:
    import shutil
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


def _sysbench(lab: Lab, vol: VolumeNodes, dbs: list[MariaDB], local_dir: Path, mnt: Path,
              opts: BenchOptions, say: Callable[[str], None]) -> dict[str, Any]:
    systems: dict[str, MariaDB] = {
        "local": MariaDB(lab, "node1", "db-local", local_dir / "mysql", server_id=1, port=3306),
        "tandem": MariaDB(lab, "node1", "db-tandem", mnt / "mysql", server_id=1, port=3307),
    }
    replica = None
    if opts.semisync:
        systems["semisync"] = MariaDB(
            lab, "node1", "db-semi", lab.host_dir("node1") / "data" / "semi" / "mysql",
            server_id=1, port=3308,
            extra=["--rpl-semi-sync-master-enabled=ON",
                   "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
                   "--rpl-semi-sync-master-timeout=30000"])
        replica = MariaDB(lab, "node2", "db-replica",
                          lab.host_dir("node2") / "data" / "replica" / "mysql", server_id=2,
                          port=3306, extra=["--rpl-semi-sync-slave-enabled=ON"])
    for name, db in [*systems.items(), *([("replica", replica)] if replica else [])]:
        say(f"mariadb {name}: install, start")
        db.install()
        dbs.append(db)
        db.start()
    if replica is not None:
        setup_semisync(systems["semisync"], replica, lab.address("node1", "replication"))
    for name, db in systems.items():
        say(f"mariadb {name}: sysbench prepare")
        sysbench_prepare(db)
    out: dict[str, Any] = {}
    slice_s = max(2, opts.seconds // opts.rounds)
    for t in opts.threads:
        rows: dict[str, list[dict[str, float]]] = {n: [] for n in systems}
        vstats: list[tuple[dict[str, int], dict[str, int], int]] = []
        for r in range(opts.rounds):
            # Interleaved short slices: (a), (b), (c) see the same background load.
            for name, db in systems.items():
                say(f"sysbench oltp_insert {t} thread(s) on {name} ({slice_s}s,"
                    f" slice {r + 1}/{opts.rounds})")
                before = _vol_stats(vol) if name == "tandem" else None
                row = sysbench_insert(db, t, slice_s)
                if before is not None:
                    vstats.append((before, _vol_stats(vol), int(row["commits"])))
                rows[name].append(row)
        out[f"{t}t"] = {n: _aggregate(v, slice_s) for n, v in rows.items()}
        commits = max(sum(c for _, _, c in vstats), 1)
        for key, stat in (("volume_writes_per_commit", "writes"),
                          ("volume_flushes_per_commit", "flushes"),
                          ("volume_kib_per_commit", "bytes_written"),
                          ("volume_al_updates_per_1000_commits", "al_updates")):
            total = sum(a.get(stat, 0) - b.get(stat, 0) for b, a, _ in vstats)
            scale = 1024 if stat == "bytes_written" else 1
            scale = 0.001 if stat == "al_updates" else scale
            out[f"{t}t"]["tandem"][key] = round(total / commits / scale, 2)
    if "semisync" in systems:
        m = systems["semisync"]
        out["semisync_check"] = {
            "yes_tx": m.status_var("Rpl_semi_sync_master_yes_tx"),
            "no_tx": m.status_var("Rpl_semi_sync_master_no_tx"),
            "status": m.status_var("Rpl_semi_sync_master_status")}
    return out


def _fio(local_dir: Path, mnt: Path, opts: BenchOptions,
         say: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    slice_s = max(2, opts.fio_seconds // opts.rounds)
    for job in FIO_JOBS:
        runs: dict[str, list[dict[str, float]]] = {"local": [], "tandem": []}
        for r in range(opts.rounds):
            for name, d in (("local", local_dir / "fio"), ("tandem", mnt / "fio")):
                d.mkdir(parents=True, exist_ok=True)
                say(f"fio {job} on {name} ({slice_s}s, slice {r + 1}/{opts.rounds})")
                runs[name].append(fio(job, d, slice_s))
        for d in (local_dir / "fio", mnt / "fio"):
            with contextlib.suppress(FileNotFoundError):
                (d / f"{job}.dat").unlink()
        out[job] = {n: {k: round(statistics.mean(x[k] for x in v), 1) for k in v[0]}
                    for n, v in runs.items()}
    return out


def _resync(lab: Lab, vol: VolumeNodes, size: int, say: Callable[[str], None]) -> dict[str, Any]:
    backing = vol.backing("node1")
    subprocess.run(["cat", str(backing)], stdout=subprocess.DEVNULL, check=True)  # warm cache
    say(f"raw TCP copy of {size // MiB} MiB node1 -> node2 over the replication network")
    floor: dict[str, float] = {}
    raw = raw_copy(lab, backing, size,
                   after=lambda dst: floor.update(disk_floor(dst, changed_blocks(size, 0.01))))
    say(f"full sync of {size // MiB} MiB (invalidate node2)")
    full = full_sync(vol, size)
    say("bitmap resync of 1% changed 4 KiB blocks")
    part = partial_resync(vol, size, 0.01)
    return {"raw_copy": raw, "full_sync": full, "resync_1pct": part, "disk_floor_1pct": floor}


# ---------------------------------------------------------------------- summary
def summarize(res: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    sb = res.get("sysbench", {})
    for key, rows in sb.items():
        if not key.endswith("t"):
            continue
        base = rows["local"]["commits_per_s"]
        for name in ("tandem", "semisync"):
            if name in rows and base:
                s[f"sysbench_{key}_{name}_ratio"] = round(rows[name]["commits_per_s"] / base, 3)
    for job, rows in res.get("fio", {}).items():
        metric = "iops" if "4k" in job else "mib_s"
        if rows["local"][metric]:
            s[f"{job}_ratio"] = round(rows["tandem"][metric] / rows["local"][metric], 3)
    fl = res.get("floor")
    if fl:
        for mode in repl_floor.MODES[1:]:
            if mode in fl:
                s[f"floor_local_over_{mode}"] = fl[mode]["local_over_this"]
    rs = res.get("resync")
    if rs:
        s["resync_vs_raw"] = round(rs["full_sync"]["mib_s"] / rs["raw_copy"]["mib_s"], 3)
        s["resync_1pct_vs_full"] = round(rs["resync_1pct"]["seconds"]
                                         / rs["full_sync"]["seconds"], 4)
        s["resync_1pct_vs_full_wall"] = round(rs["resync_1pct"]["wall_seconds"]
                                              / rs["full_sync"]["wall_seconds"], 4)
        if rs.get("disk_floor_1pct"):
            s["disk_floor_1pct_vs_full"] = round(rs["disk_floor_1pct"]["seconds"]
                                                 / rs["full_sync"]["seconds"], 4)
    checks = {}
    if "sysbench_1t_tandem_ratio" in s:
        checks["sysbench 1 thread (b)/(a) >= 0.5"] = s["sysbench_1t_tandem_ratio"] >= 0.5
    if "resync_vs_raw" in s:
        checks["resync >= 0.8x raw copy"] = s["resync_vs_raw"] >= 0.8
        checks["1% resync <= 3% of full sync"] = s["resync_1pct_vs_full"] <= 0.03
    s["targets_met"] = checks
    return s


def render(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    s = res["summary"]
    sb = res.get("sysbench")
    if sb:
        o = res["options"]
        t = Table(title=f"sysbench oltp_insert (autocommit), commits/s: {o['seconds']}s per"
                  f" system and thread count, in {o['rounds']} interleaved slices")
        for col in ("threads", "(a) local ext4", "(b) tandem volume", "(c) semi-sync",
                    "(b)/(a)", "(c)/(a)", "(b) avg latency ms", "(b) writes/flushes per commit"):
            t.add_column(col, justify="right")
        for key, rows in sb.items():
            if not key.endswith("t"):
                continue
            b = rows["tandem"]
            c = rows.get("semisync")
            t.add_row(key[:-1], f"{rows['local']['commits_per_s']:.0f}",
                      f"{b['commits_per_s']:.0f}", f"{c['commits_per_s']:.0f}" if c else "-",
                      f"{s.get(f'sysbench_{key}_tandem_ratio', 0):.2f}",
                      f"{s.get(f'sysbench_{key}_semisync_ratio', 0):.2f}" if c else "-",
                      f"{b['latency_avg_ms']:.2f}",
                      f"{b.get('volume_writes_per_commit', 0):.1f} / "
                      f"{b.get('volume_flushes_per_commit', 0):.1f}")
        console.print(t)
        if "semisync_check" in sb:
            console.print(f"semi-sync: {sb['semisync_check']}")
    fio_res = res.get("fio")
    if fio_res:
        t = Table(title=f"fio, {res['options']['fio_seconds']}s each in {res['options']['rounds']}"
                  " interleaved slices, O_DIRECT, psync QD1")
        for col in ("job", "(a) local ext4", "(b) tandem volume", "(b)/(a)",
                    "(a) mean lat µs", "(b) mean lat µs"):
            t.add_column(col, justify="right")
        for job, rows in fio_res.items():
            metric, unit = ("iops", "IOPS") if "4k" in job else ("mib_s", "MiB/s")
            t.add_row(job, f"{rows['local'][metric]:.0f} {unit}",
                      f"{rows['tandem'][metric]:.0f} {unit}", f"{s[f'{job}_ratio']:.2f}",
                      f"{rows['local']['clat_mean_us']:.0f}",
                      f"{rows['tandem']['clat_mean_us']:.0f}")
        console.print(t)
    fl = res.get("floor")
    if fl:
        t = Table(title=f"one 4 KiB write at a time, O_DIRECT + RWF_DSYNC, {fl['writes_per_mode']}"
                  f" writes per kind in {res['options']['rounds']} interleaved slices")
        for col in ("write", "mean µs", "p50 µs", "p90 µs", "local / this"):
            t.add_column(col, justify="right")
        names = {"local": "node1's disk alone",
                 "durable": "replicated, peer writes durably (floor of protocol C, write-through)",
                 "received": "replicated, peer answers on receipt (a semi-sync replica's ack)",
                 "volume": "tandem volume: the Primary's FUSE file"}
        for mode in repl_floor.MODES:
            if mode in fl:
                row = fl[mode]
                t.add_row(names[mode], f"{row['mean_us']:.0f}", f"{row['p50_us']:.0f}",
                          f"{row['p90_us']:.0f}", f"{row.get('local_over_this', 1.0):.2f}")
        console.print(t)
        msg = ("A commit here is mostly its device writes, one after another, and with"
               " protocol C each waits for the peer: with durable peer writes the commit rate"
               f" stays near {fl['durable']['local_over_this']:.2f}x the local one for any"
               " implementation (the 'durable' row).")
        if "volume" in fl:
            over = fl["volume"]["mean_us"] - fl["durable"]["mean_us"]
            msg += f" The volume's own cost above that floor: {over:.0f} µs per write."
        console.print(msg)
    rs = res.get("resync")
    if rs:
        t = Table(title="resync over the lab replication network")
        for col in ("what", "bytes", "seconds (transfer)", "seconds (wall)", "MiB/s"):
            t.add_column(col, justify="right")
        rows = [("raw TCP copy", rs["raw_copy"]), ("full sync", rs["full_sync"]),
                ("1% blocks changed", rs["resync_1pct"])]
        if rs.get("disk_floor_1pct"):
            rows.append(("node2 disk alone, 1% blocks", rs["disk_floor_1pct"]))
        for name, row in rows:
            t.add_row(name, f"{row['bytes'] // MiB} MiB" if row["bytes"] >= MiB
                      else f"{row['bytes'] // 1024} KiB",
                      f"{row['seconds']:.3f}", f"{row.get('wall_seconds', row['seconds']):.3f}",
                      f"{row['mib_s']:.0f}")
        console.print(t)
        console.print(f"full sync / raw copy = {s['resync_vs_raw']:.2f};"
                      f" 1% resync / full sync = {100 * s['resync_1pct_vs_full']:.1f}%"
                      f" (wall, with reconnect: {100 * s['resync_1pct_vs_full_wall']:.1f}%;"
                      f" the disk alone: {100 * s.get('disk_floor_1pct_vs_full', 0):.1f}%)")
    fs = res.get("filesystems", {})
    from rich.markup import escape
    console.print(escape(f"filesystems: (a) {fs.get('local', '?')}; (b) {fs.get('tandem', '?')}"
                         f" [{res['options']['mkfs']}]"))
    console.print("backing files: " + ("preallocated (zero-filled, thick)"
                                       if res["options"]["preallocated_backing"] else "sparse")
                  + f"; volume cache: {res['options'].get('volume_cache', 'write-back')}")
    console.print("mariadb (all instances): " + " ".join(res["options"]["mariadb_options"])
                  + "; redo log written out after the install, as the agent does")
    for name, ok in s.get("targets_met", {}).items():
        console.print(f"[{'green' if ok else 'red'}]{'met' if ok else 'NOT met'}[/]: {name}")
