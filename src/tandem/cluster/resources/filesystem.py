"""ext4 on a loop device on a file: the primary's view of the replicated volume.

Start attaches the device file (the volume's FUSE file) with
``losetup --direct-io=on --find --show``, writes down *which* loop device it
got in a node-local state file before doing anything else (a restarted agent
must detach exactly that one, never guess), makes ext4 only when blkid finds
no filesystem at all and ``mkfs = true``, and mounts without fsck: ext4
replays its journal on mount, which is all the recovery a crashed primary's
filesystem needs. Mount options, and why, for a journal on a replicated file:

- ``noatime``: reads must not turn into replicated writes.
- ``data=ordered`` (ext4's default, stated so nobody "tunes" it away): file
  data reaches the volume before the metadata that points at it, so a
  failover never exposes stale blocks inside files.
- ``barrier=1`` (default, stated): the cache flushes ext4 issues for its
  journal commits become FUSE fsyncs, which is exactly where protocol C waits
  for the peer. ``nobarrier`` would let acknowledged commits vanish. With a
  write-through volume (``write_through``, the default of tandem volumes) the
  loop device says it has no volatile cache, so the block layer drops those
  flushes itself: every write it completes is already durable on both disks.
- ``errors=remount-ro``: when the volume returns EIO (suspended, failing disk)
  stop writing at once instead of carrying on over a half-written journal;
  ``errors=panic`` would take down every host sharing the kernel.
- no ``journal_async_commit``: ext4 refuses it with data=ordered, and it
  trades a flush for replay-time checks we do not want to depend on.
- mkfs makes ext4's default features unless ``mkfs_features`` names others;
  ``fast_commit`` saves a replicated write per commit but makes the failover's
  mount replay with writes, seconds longer (tandem.config.EXT4_FEATURES).

Stop unmounts (retrying briefly), and when the mount stays busy it names the
processes that hold it (a /proc scan) and fails: killing unknown processes or
a lazy unmount would leave the filesystem writable behind our back while the
peer takes over. Then it detaches exactly the loop device it recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tandem.cluster.resources.base import Health, Resource, ResourceError, run_cmd
from tandem.cluster.resources.config import FilesystemConfig
from tandem.cluster.resources.procs import holders
from tandem.volume.fuse_stack import set_write_through

log = logging.getLogger(__name__)

MOUNT_OPTIONS = ("noatime", "data=ordered", "barrier=1", "errors=remount-ro")
PROBE_NAME = ".tandem-probe"


def _settle(fut: asyncio.Future, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
# How long looking up the device path may take before the volume behind it is
# called unresponsive (a held FUSE volume does not answer GETATTR).
DEVICE_LOOKUP_TIMEOUT = 5.0


@dataclass(frozen=True)
class DeviceFacts:
    exists: bool
    is_block: bool
    real: str  # what /sys/block/loopN/loop/backing_file shows for it


def device_facts(device: Path) -> DeviceFacts:
    """stat + realpath of the device: blocking, and on a FUSE file a round trip
    to the volume daemon. Only ever called off the event loop."""
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        return DeviceFacts(False, False, os.path.realpath(device))
    return DeviceFacts(True, stat.S_ISBLK(mode), os.path.realpath(device))


def mount_source(mountpoint: Path) -> str | None:
    """The device mounted at `mountpoint` (``/dev/loop3``), None if nothing is."""
    target = os.path.realpath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            if fields[4].replace("\\040", " ") == target:
                found = post.split()[1]  # the last mount on top wins
    return found


def mount_options(mountpoint: Path) -> set[str]:
    target = os.path.realpath(mountpoint)
    opts: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                opts = set(fields[5].split(","))
    return opts


def loop_backing_file(dev: str) -> str | None:
    """What a loop device is attached to now (None: detached or not a loop)."""
    name = Path(dev).name
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def loop_diskseq(dev: str) -> int | None:
    """The kernel's sequence number of what `dev` is attached to now: a new one for every
    attach, never reused until reboot (Linux 5.15+; None where there is none). Loop
    devices are shared by everything on the machine, and once a volume's FUSE file is
    torn away a loop's backing path reads only "/disk" -- the same for every volume's
    loop: the number, not the name, says a loop is still the one this resource attached
    (a crashed node's restarted agent took another lab's stale loop0 for its own and
    mounted it, torture 74:132)."""
    try:
        return int(Path(f"/sys/block/{Path(dev).name}/diskseq").read_text())
    except (OSError, ValueError):
        return None


def recorded_loop_is_current(state: dict, backing_ok) -> bool:
    """A filesystem resource's recorded loop device (`state`: its state file) still
    attached to what it attached: same backing file (`backing_ok(path)`) and, where
    recorded, the same diskseq."""
    dev = state.get("loop")
    if not dev or not backing_ok(loop_backing_file(dev)):
        return False
    seq = state.get("diskseq")
    return seq is None or loop_diskseq(dev) == seq


BLANK_BYTES = 1 << 20


def not_blank(dev: str) -> str | None:
    """Why `dev` must not be formatted, None when its first MiB reads back as zeros.

    blkid also says "nothing found" when it cannot read the device (a loop whose
    FUSE file was torn away), and mkfs over a database is the one mistake no
    resync can undo; a volume that ever held ext4 has its superblock at 1 KiB."""
    try:
        fd = os.open(dev, os.O_RDONLY)
        try:
            head = os.pread(fd, BLANK_BYTES, 0)
        finally:
            os.close(fd)
    except OSError as e:
        return f"its first MiB cannot be read ({e.strerror})"
    if len(head) < BLANK_BYTES:
        return f"it is shorter than {BLANK_BYTES} bytes"
    if head.count(0) != len(head):
        return "its first MiB is not all zeros"
    return None


class Filesystem(Resource):
    kind = "filesystem"
    config: FilesystemConfig

    def __init__(self, config: FilesystemConfig):
        super().__init__(config)
        self._known: DeviceFacts | None = None
        self._attaching: asyncio.Future | None = None  # a losetup that a cancelled start left running
        self._probe_pending: tuple[asyncio.Future, float] | None = None
        self._warned_full = False

    async def _facts(self) -> DeviceFacts:
        """What the device is, looked up in a thread and remembered once it exists.

        The device is usually the volume's FUSE file: a stat of it is answered by
        the volume daemon, which may hold every worker while writes are held (fence,
        lapsed write lease). Doing that on the event loop once froze the agent,
        so it could never renew the lease that would have released the volume."""
        if self._known is not None:
            return self._known
        try:
            facts = await asyncio.wait_for(asyncio.to_thread(device_facts, self.config.device),
                                           DEVICE_LOOKUP_TIMEOUT)
        except TimeoutError:
            raise ResourceError(f"{self.config.device} does not answer a stat within"
                                f" {DEVICE_LOOKUP_TIMEOUT:.0f} s (volume I/O held?)") from None
        if facts.exists:
            self._known = facts
        return facts

    def _our_loop(self, facts: DeviceFacts) -> str | None:
        """The loop device recorded in our state, if it is still attached to our file."""
        st = self.load_state() or {}
        # After the volume's FUSE file was torn away under it (forced demotion), the
        # loop device still exists but its backing path reads "/<file name>".
        names = (facts.real, "/" + Path(self.config.device).name)
        return st["loop"] if recorded_loop_is_current(st, lambda back: back in names) else None

    async def _attach(self) -> tuple[str, str]:
        cfg = self.config
        facts = await self._facts()
        if facts.is_block:
            return str(cfg.device), f"using block device {cfg.device}"
        if not facts.exists:
            raise ResourceError(f"device file {cfg.device} does not exist (is the volume Primary?)")
        dev = self._our_loop(facts)
        if dev:
            return dev, f"{dev} already attached by us"
        real = facts.real
        others = (await run_cmd(["losetup", "-n", "-O", "NAME", "-j", real], timeout=10)).output.split()
        if others:
            raise ResourceError(f"{cfg.device} is already attached as {', '.join(others)}, not by this"
                                " resource: refusing to attach it twice (detach it by hand after checking)")
        # Shielded: a start cancelled here (the agent demoting while a monitor's
        # recovery restarts this resource) must still record the loop device it
        # attached, or nobody ever detaches it (a CI run left one behind).
        self._attaching = asyncio.ensure_future(self._attach_and_record(real))
        dev = await asyncio.shield(self._attaching)
        return dev, f"attached {dev} (direct I/O {'on' if cfg.direct_io else 'off'})"

    async def _attach_and_record(self, real: str) -> str:
        args = ["losetup", "--find", "--show"]
        if self.config.direct_io:
            args.insert(1, "--direct-io=on")
        dev = (await run_cmd([*args, real], timeout=30)).output.strip().splitlines()[-1]
        if not dev.startswith("/dev/loop"):
            raise ResourceError(f"losetup printed {dev!r}, not a loop device")
        self.save_state({"loop": dev, "device": real, "diskseq": loop_diskseq(dev)})
        return dev

    async def _ensure_fs(self, dev: str) -> str:
        cfg = self.config
        res = await run_cmd(["blkid", "-p", "-o", "value", "-s", "TYPE", dev], timeout=30, check=False)
        fstype = res.output.strip()
        if res.returncode == 2 or (res.returncode == 0 and not fstype):
            if not cfg.mkfs:
                raise ResourceError(f"no filesystem on {cfg.device} and mkfs is off: refusing to mount")
            why = await asyncio.to_thread(not_blank, dev)
            if why:
                raise ResourceError(f"blkid finds no filesystem on {dev} but {why}: refusing mkfs"
                                    " (check the volume and the loop device by hand)")
            # nodiscard: the FUSE file refuses FALLOCATE; lazy_journal_init=0: the
            # journal is zeroed now, so a replay never trips over old blocks.
            features = ["-O", ",".join(cfg.mkfs_features)] if cfg.mkfs_features else []
            await run_cmd(["mkfs.ext4", "-q", "-E", "nodiscard,lazy_journal_init=0", *features, dev],
                          timeout=300)
            return "made ext4"
        if res.returncode != 0:
            raise ResourceError(f"blkid {dev}: {res.last_line}")
        if fstype != cfg.fstype:
            raise ResourceError(f"{cfg.device} holds {fstype}, not {cfg.fstype}: refusing to mount")
        return f"found {fstype}"

    async def _drop_stale_loop(self) -> str:
        """Our recorded loop device, if its volume file was torn away under it (a forced
        demotion; the volume's own force_secondary_after) is stopped first: unmounted
        (refused while in use, naming who uses it) and detached. Taken for ours and
        current, its stale mount (read-only after the I/O errors) was reported
        "already mounted", and MariaDB's start failed on it (review 35)."""
        st = self.load_state() or {}
        torn = "/" + Path(self.config.device).name
        if not st.get("loop") or not recorded_loop_is_current(st, lambda back: back == torn):
            return ""
        log.warning("%s: loop device %s is left from a volume file torn away: stopping it first",
                    self.name, st["loop"])
        return f"stale {await self._stop()}; "

    async def _start(self) -> str:
        cfg = self.config
        stale = await self._drop_stale_loop()
        dev, attached = await self._attach()
        attached = stale + attached
        if dev.startswith("/dev/loop"):  # stated every time: the setting outlives a detach
            try:
                await asyncio.to_thread(set_write_through, dev, cfg.write_through)
            except (OSError, RuntimeError) as e:
                raise ResourceError(f"cannot set the write cache mode of {dev}: {e}") from None
            if cfg.write_through:
                attached += ", write-through"
        src = mount_source(cfg.mountpoint)
        if src is not None:
            if os.path.realpath(src) == os.path.realpath(dev):
                return f"{cfg.mountpoint} already mounted from {dev}"
            raise ResourceError(f"{cfg.mountpoint} is already mounted from {src}, not {dev}")
        made = await self._ensure_fs(dev)
        cfg.mountpoint.mkdir(parents=True, exist_ok=True)
        opts = ",".join([*MOUNT_OPTIONS, *cfg.options])
        await run_cmd(["mount", "-t", cfg.fstype, "-o", opts, dev, str(cfg.mountpoint)], timeout=120)
        return f"{attached}, {made}, mounted at {cfg.mountpoint}"

    async def _stop(self) -> str:
        cfg = self.config
        done = []
        if self._attaching is not None and not self._attaching.done():
            # Its loop device is ours to detach once it is recorded.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._attaching), 35)
        mounted = mount_source(cfg.mountpoint)
        facts = await self._facts()
        ours = self._our_loop(facts)
        if mounted is not None:
            if ours is not None and os.path.realpath(mounted) != os.path.realpath(ours):
                raise ResourceError(f"{cfg.mountpoint} is mounted from {mounted}, not from our {ours}:"
                                    " leaving it alone")
            await self._umount()
            done.append(f"unmounted {cfg.mountpoint}")
        if ours is not None:
            with contextlib.suppress(OSError, RuntimeError):  # the next user of this loop device
                await asyncio.to_thread(set_write_through, ours, False)
            await run_cmd(["losetup", "-d", ours], timeout=30)
            done.append(f"detached {ours}")
        elif not facts.is_block and facts.exists:
            res = await run_cmd(["losetup", "-n", "-O", "NAME", "-j", facts.real], timeout=10, check=False)
            if res.output.split():  # not ours to detach, but the operator must know
                done.append(f"left {', '.join(res.output.split())} attached (no state file says we"
                            " attached it)")
        self.clear_state()
        return ", ".join(done) if done else "was not mounted"

    async def _umount(self) -> None:
        cfg = self.config
        last = ""
        for attempt in range(cfg.umount_retries):
            res = await run_cmd(["umount", str(cfg.mountpoint)], timeout=60, check=False)
            if res.returncode == 0:
                return
            last = res.last_line
            if attempt + 1 < cfg.umount_retries:
                await asyncio.sleep(0.2 * (attempt + 1))
        who = await asyncio.to_thread(holders, cfg.mountpoint)
        if who:
            names = ", ".join(f"pid {pid} ({comm})" for pid, comm in who)
            raise ResourceError(f"cannot unmount {cfg.mountpoint}: busy, held by {names};"
                                " not killing processes we did not start")
        raise ResourceError(f"cannot unmount {cfg.mountpoint}: {last}")

    async def _monitor(self) -> Health:
        cfg = self.config
        src = mount_source(cfg.mountpoint)
        facts = await self._facts()
        if src is None:
            if self._our_loop(facts):
                return Health.failed(f"{cfg.mountpoint} is not mounted but our loop device is attached")
            return Health.stopped(f"{cfg.mountpoint} is not mounted")
        ours = self._our_loop(facts) or (str(cfg.device) if facts.is_block else None)
        if ours is None or os.path.realpath(src) != os.path.realpath(ours):
            return Health.failed(f"{cfg.mountpoint} is mounted from {src}, not from our device")
        if "ro" in mount_options(cfg.mountpoint):
            return Health.failed(f"{cfg.mountpoint} is read-only (ext4 remounts so after an I/O error)")
        room, warning = self._room()
        if cfg.probe:
            await self._probe_once()
        return Health.ok(f"{cfg.mountpoint} mounted from {src}, {room}" + (", probe written and read back"
                                                                            if cfg.probe else ""), warning)

    def _room(self) -> tuple[str, str]:
        """Space used, and a warning above `warn_used` (no failover: the peer has the
        same data; but MariaDB on a full disk waits for space and commits hang)."""
        try:
            st = os.statvfs(self.config.mountpoint)
        except OSError as e:
            return f"space unknown ({e.strerror})", ""
        used = 1 - st.f_bavail / st.f_blocks if st.f_blocks else 0.0
        left = f"{used:.0%} used, {st.f_bavail * st.f_frsize >> 20} MiB free"
        if used <= self.config.warn_used:
            self._warned_full = False
            return left, ""
        warning = f"{self.config.mountpoint} SPACE LOW: {left}; grow the volume or free space"
        if not self._warned_full:  # once per crossing; the member record keeps saying it
            log.warning("%s (a full disk stalls the database)", warning)
        self._warned_full = True
        return f"SPACE LOW: {left}", warning

    async def _probe_once(self) -> None:
        """One probe at a time, on its own thread: a probe stuck on held volume I/O
        is reported again (with its age) instead of starting another thread each
        monitor cycle, which would exhaust asyncio's default executor and stall every
        other to_thread call of the agent."""
        pending = self._probe_pending
        if pending is not None and not pending[0].done():
            raise ResourceError(f"the probe started {time.monotonic() - pending[1]:.1f} s ago has not"
                                " returned (volume I/O held?)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def run() -> None:
            try:
                self._probe()
                result: BaseException | None = None
            except BaseException as e:  # handed to the event loop
                result = e
            loop.call_soon_threadsafe(_settle, fut, result)

        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved if we gave up
        self._probe_pending = (fut, time.monotonic())
        threading.Thread(target=run, name="fs-probe", daemon=True).start()
        await asyncio.shield(fut)

    def _probe(self) -> None:
        """Write, fsync and read back a small file: proves the whole stack
        (ext4, loop, FUSE, replication) completes a flush. Runs in a worker
        thread because it can hang on a suspended volume; the monitor timeout
        then reports it (the thread finishes whenever the kernel lets it)."""
        path = self.config.mountpoint / PROBE_NAME
        token = secrets.token_hex(16).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, token)
                os.fsync(fd)
            finally:
                os.close(fd)
            back = path.read_bytes()
        except OSError as e:
            raise ResourceError(f"probe file {path}: {e.strerror}") from None
        if back != token:
            raise ResourceError(f"probe file {path}: read back different bytes")
