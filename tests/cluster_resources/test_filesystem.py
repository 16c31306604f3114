"""filesystem: loop + ext4 on a sparse file inside a lab host, the full cycle,
and a stop that refuses (and names who holds the mount) while it is busy."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tandem.cluster.resources.filesystem import loop_backing_file, mount_options, mount_source
from tests.cluster_resources.conftest import must, op, sparse_file

HOST = "node1"


def fs_config(lab, name: str = "fs") -> dict:
    d = lab.host_dir(HOST)
    img = sparse_file(d / "data" / f"{name}.img", 128 << 20)
    return {"name": name, "device": str(img), "mountpoint": str(d / "data" / f"{name}-mnt"),
            "run_dir": str(d / "run"), "mkfs": True}


def test_start_monitor_stop_cycle(lab, resources):
    cfg = fs_config(lab, "fs1")
    first = resources.start(HOST, "filesystem", cfg)
    assert "made ext4" in first["message"] and "attached /dev/loop" in first["message"]
    dev = mount_source(cfg["mountpoint"])
    assert dev and dev.startswith("/dev/loop")
    assert loop_backing_file(dev) == cfg["device"]
    assert {"rw", "noatime"} <= mount_options(cfg["mountpoint"])

    health = must(lab, HOST, "filesystem", "monitor", cfg)
    assert "probe written and read back" in health["message"]
    again = must(lab, HOST, "filesystem", "start", cfg)  # idempotent, no second loop device
    assert "already mounted" in again["message"]

    stopped = must(lab, HOST, "filesystem", "stop", cfg)
    assert f"detached {dev}" in stopped["message"]
    assert mount_source(cfg["mountpoint"]) is None and loop_backing_file(dev) != cfg["device"]
    mon = op(lab, HOST, "filesystem", "monitor", cfg)
    assert mon["state"] == "stopped" and mon["rc"] == 7

    # A second start finds the filesystem (no mkfs) and keeps the data.
    second = must(lab, HOST, "filesystem", "start", cfg)
    assert "found ext4" in second["message"]
    assert (lab.host_dir(HOST) / "data" / "fs1-mnt" / ".tandem-probe").exists()


def _features(dev: str) -> set[str]:
    out = subprocess.run(["dumpe2fs", "-h", dev], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Filesystem features:"))
    return set(line.split(":", 1)[1].split())


def test_mkfs_makes_the_features_the_config_names(lab, resources):
    """By default ext4's own (no fast_commit: its replay after a crash writes, and on
    the volume each write waits for the peer; tandem.config.EXT4_FEATURES); a config
    can ask for fast_commit."""
    default = fs_config(lab, "fs-plain")
    resources.start(HOST, "filesystem", default)
    plain = _features(mount_source(default["mountpoint"]))
    assert "has_journal" in plain and "fast_commit" not in plain
    fast = {**fs_config(lab, "fs-fc"), "mkfs_features": ["fast_commit"]}
    resources.start(HOST, "filesystem", fast)
    assert "fast_commit" in _features(mount_source(fast["mountpoint"]))
    must(lab, HOST, "filesystem", "stop", fast)
    must(lab, HOST, "filesystem", "stop", default)


def _write_cache(dev: str) -> str:
    return Path(f"/sys/block/{dev.rsplit('/', 1)[-1]}/queue/write_cache").read_text().strip()


def test_write_through_marks_the_loop_device(lab, resources):
    """For a write-through volume the loop device must say it has no volatile
    cache (so ext4's flushes stop there); for anything else it must not."""
    plain = fs_config(lab, "fs-wb")
    resources.start(HOST, "filesystem", plain)
    assert _write_cache(mount_source(plain["mountpoint"])) == "write back"
    cfg = {**fs_config(lab, "fs-wt"), "write_through": True}
    first = resources.start(HOST, "filesystem", cfg)
    assert "write-through" in first["message"]
    dev = mount_source(cfg["mountpoint"])
    assert dev and _write_cache(dev) == "write through"
    must(lab, HOST, "filesystem", "stop", cfg)
    must(lab, HOST, "filesystem", "stop", plain)


def test_no_filesystem_and_mkfs_off_refuses(lab, resources):
    cfg = {**fs_config(lab, "fs2"), "mkfs": False}
    out = op(lab, HOST, "filesystem", "start", cfg)
    assert not out["ok"] and "no filesystem" in out["message"]
    # The failed start left its loop device attached (recorded): stop detaches it.
    stop = must(lab, HOST, "filesystem", "stop", cfg)
    assert "detached /dev/loop" in stop["message"]


def test_no_mkfs_over_data_blkid_does_not_recognise(lab, resources):
    """blkid finds nothing, mkfs is on, but the device holds bytes: never format it."""
    cfg = fs_config(lab, "fs4")
    with open(cfg["device"], "r+b") as f:
        f.seek(300 << 10)
        f.write(b"rows of a database that lost its superblock")
    before = Path(cfg["device"]).read_bytes()[: 1 << 20]
    out = op(lab, HOST, "filesystem", "start", cfg)
    assert not out["ok"] and "refusing mkfs" in out["message"], out
    assert "not all zeros" in out["message"]
    assert Path(cfg["device"]).read_bytes()[: 1 << 20] == before
    must(lab, HOST, "filesystem", "stop", cfg)


def test_busy_stop_names_the_holder(lab, resources):
    cfg = fs_config(lab, "fs3")
    resources.start(HOST, "filesystem", cfg)
    holder = lab.spawn(HOST, "holder", ["sh", "-c", f"cd {cfg['mountpoint']} && exec sleep 60"])
    try:
        for _ in range(100):  # wait until it sits in the mount
            if subprocess.run(["readlink", f"/proc/{holder.pid}/cwd"], capture_output=True,
                              text=True).stdout.strip() == cfg["mountpoint"]:
                break
        out = op(lab, HOST, "filesystem", "stop", cfg)
        assert not out["ok"]
        assert f"held by pid {holder.pid} (sleep)" in out["message"], out["message"]
        assert "not killing" in out["message"]
        assert mount_source(cfg["mountpoint"]) is not None  # still mounted, nothing killed
        assert must(lab, HOST, "filesystem", "monitor", cfg)["ok"]
    finally:
        lab.stop(HOST, "holder")
    assert "unmounted" in must(lab, HOST, "filesystem", "stop", cfg)["message"]


def test_a_cancelled_start_leaves_no_loop_device_behind(lab):
    """The agent cancels a start in flight (it demotes while a monitor's recovery
    restarts the filesystem). Wherever the cancel lands, the stop that follows
    must leave no loop device on the file: one attached by a losetup whose start
    was cancelled before it recorded the device stayed attached for good (CI)."""
    import asyncio
    import contextlib

    from tandem.cluster.resources.config import FilesystemConfig
    from tandem.cluster.resources.filesystem import Filesystem
    cfg = FilesystemConfig(**fs_config(lab, "fs-cancel"))

    def attached() -> list[str]:
        return subprocess.run(["losetup", "-n", "-O", "NAME", "-j", str(cfg.device)],
                              capture_output=True, text=True).stdout.split()

    async def cancelled_start_then_stop(delay: float):
        fs = Filesystem(cfg)
        task = asyncio.ensure_future(fs.start())
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return await fs.stop()

    try:
        for i in range(25):
            stopped = asyncio.run(cancelled_start_then_stop(0.002 * i))
            assert attached() == [], f"cancel after {2 * i} ms: {stopped}"
            assert mount_source(cfg.mountpoint) is None, stopped
    finally:
        for dev in attached():
            subprocess.run(["umount", str(cfg.mountpoint)], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_a_nearly_full_filesystem_is_reported_not_failed(lab, resources):
    """A full disk wedges MariaDB (torture 56/57) but is no reason to fail over (the
    peer holds the same data): the monitor stays ok and says SPACE LOW."""
    cfg = {**fs_config(lab, "fs-full"), "warn_used": 0.5, "probe": False}
    resources.start(HOST, "filesystem", cfg)
    health = must(lab, HOST, "filesystem", "monitor", cfg)
    assert "used" in health["message"] and "SPACE LOW" not in health["message"]
    filler = Path(cfg["mountpoint"]) / "filler"
    subprocess.run(["fallocate", "-l", "100M", str(filler)], check=True)
    health = must(lab, HOST, "filesystem", "monitor", cfg)
    assert "SPACE LOW" in health["message"] and "MiB free" in health["message"]
    filler.unlink()
    assert "SPACE LOW" not in must(lab, HOST, "filesystem", "monitor", cfg)["message"]


def test_a_recorded_loop_number_attached_anew_is_not_ours(lab):
    """Torture 74:132: node2 crashed (its loop detached with the crash), and its
    restarted agent found the loop number its state file recorded attached again --
    by another lab, to a volume file whose FUSE mount was torn away (backing path
    "/disk", the same for every volume). It took that loop for its own, mounted
    another lab's filesystem and MariaDB failed on it for 120 s. A loop is ours only
    while it is the very attach we recorded (its diskseq), not just the same number
    on the same path."""
    import asyncio

    from tandem.cluster.resources.config import FilesystemConfig
    from tandem.cluster.resources.filesystem import Filesystem, loop_diskseq
    cfg = FilesystemConfig(**fs_config(lab, "fs-seq"))
    fs = Filesystem(cfg)
    dev = None
    try:
        assert asyncio.run(fs.start()).ok
        dev = fs.load_state()["loop"]
        seq = loop_diskseq(dev)
        assert seq is not None and fs.load_state()["diskseq"] == seq
        # The node "crashes": its mount and loop go, its state file stays.
        subprocess.run(["umount", str(cfg.mountpoint)], check=True)
        subprocess.run(["losetup", "-d", dev], check=True)
        # Someone else attaches that same loop number (here to the same path, which is
        # what a torn-away "/disk" of another volume looks like to a path check).
        subprocess.run(["losetup", "--direct-io=on", dev, str(cfg.device)], check=True)
        assert loop_backing_file(dev) == str(Path(cfg.device).resolve())
        assert loop_diskseq(dev) != seq
        r = asyncio.run(fs.start())
        # not taken for ours: a stranger's attach of our file, refused (the old code
        # said "already attached by us" and mounted it)
        assert not r.ok and "not by this resource" in r.sentence, r
        subprocess.run(["losetup", "-d", dev], check=True)
        r = asyncio.run(fs.start())
        assert r.ok and "attached" in r.sentence and "by us" not in r.sentence, r
    finally:
        subprocess.run(["umount", str(cfg.mountpoint)], capture_output=True)
        for d in subprocess.run(["losetup", "-n", "-O", "NAME", "-j", str(cfg.device)],
                                capture_output=True, text=True).stdout.split():
            subprocess.run(["losetup", "-d", d], capture_output=True)


def test_a_loop_device_whose_file_was_torn_away_is_stopped_before_a_start(lab):
    """The volume demoted itself under a running group (force_secondary_after, its agent
    dead): its FUSE file went, the loop device and the ext4 mount on it stayed (the
    loop's backing path then reads "/<file name>"). A later start here took that loop
    for ours and current, said "already mounted", and MariaDB failed on the stale,
    read-only filesystem (review 35). Here a tmpfs lazily unmounted plays the FUSE
    mount torn away: the start stops the stale mount and loop, then attaches the new
    file."""
    import asyncio

    from tandem.cluster.resources.config import FilesystemConfig
    from tandem.cluster.resources.filesystem import Filesystem
    d = lab.host_dir(HOST) / "data"
    under = d / "torn-under"
    under.mkdir(parents=True, exist_ok=True)
    mnt = d / "torn-mnt"

    def fresh_volume_file() -> Path:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(under)], check=True)
        return sparse_file(under / "vol.img", 64 << 20)

    img = fresh_volume_file()
    cfg = FilesystemConfig(name="fs-torn", device=str(img), mountpoint=str(mnt),
                           run_dir=str(lab.host_dir(HOST) / "run"), mkfs=True)
    fs = Filesystem(cfg)
    loops: list[str] = []
    try:
        assert asyncio.run(fs.start()).ok
        old = fs.load_state()["loop"]
        loops.append(old)
        subprocess.run(["umount", "-l", str(under)], check=True)  # the volume file torn away
        assert loop_backing_file(old) == "/vol.img"
        fresh_volume_file()  # promoted again: a new file at the same path
        r = asyncio.run(fs.start())
        assert r.ok, r.sentence
        assert "stale" in r.sentence and f"detached {old}" in r.sentence, r.sentence
        dev = mount_source(str(mnt))
        loops.append(dev)
        assert dev and loop_backing_file(dev) == str(img), (dev, loop_backing_file(dev or ""))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        subprocess.run(["umount", "-l", str(under)], capture_output=True)
