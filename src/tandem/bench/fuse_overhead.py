"""Benchmark: what the FUSE front end costs, raw /dev/fuse server vs pyfuse3.

``python -m tandem.bench.fuse_overhead [--runtime 10] [--no-pyfuse3]`` (root).

In one run on this machine it measures fio 4 KiB random writes with O_DIRECT and
fsync after every write (the shape of a database commit) on

  (a) an ext4 file on the local disk,
  (b) ext4 on loop(direct-io) on the raw FUSE file (:class:`FuseServer`, FileBackend),
  (c) the same through a minimal, naive pyfuse3 passthrough (if pyfuse3 imports),

and prints IOPS with ratios against (a). It then estimates the per-request
overhead two ways: the QD1 round trip of O_DIRECT pwrite/fsync on the FUSE file
with a null backend (pure kernel + server cost), and the extra time per fio op
divided by the FUSE requests each op caused (counted by the raw server).
This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from tandem.volume.fuse_raw import FileBackend, FuseServer
from tandem.volume.fuse_stack import ext4_mount, loop_device, mkfs_ext4
from tandem.volume.fuse_sys import mounted_fs_type, umount

IMAGE_SIZE = 512 << 20


def fio_iops(directory: str, runtime: int) -> tuple[float, float]:
    """Run the commit-shaped fio job in ``directory``; return (iops, mean clat us)."""
    cmd = ["fio", "--name=commit", f"--filename={directory}/fio.dat", "--rw=randwrite",
           "--bs=4k", "--direct=1", "--fsync=1", "--size=64M", f"--runtime={runtime}",
           "--time_based", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         timeout=runtime + 120).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]["write"]
    return float(job["iops"]), float(job["clat_ns"]["mean"]) / 1000.0


def qd1_latency_us(path: str, n: int = 5000) -> dict[str, float]:
    """Mean µs of O_DIRECT 4 KiB pwrite, pread and fsync on ``path``, one at a time."""
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    ops: dict[str, Callable[[int], object]] = {
        "write": lambda i: os.pwritev(fd, [buf], 4096 * (i % 4096)),
        "read": lambda i: os.preadv(fd, [buf], 4096 * (i % 4096)),
        "fsync": lambda i: os.fsync(fd),
    }
    out = {}
    try:
        for name, fn in ops.items():
            for i in range(200):
                fn(i)
            t = time.perf_counter()
            for i in range(n):
                fn(i)
            out[name] = (time.perf_counter() - t) / n * 1e6
    finally:
        os.close(fd)
        buf.close()
    return out


class NullBackend:
    """Does no I/O: isolates the FUSE round trip (kernel + server) cost."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._zero = bytes(1 << 20)

    def read(self, offset: int, length: int) -> memoryview:
        return memoryview(self._zero)[:length]

    def write(self, offset: int, data: memoryview) -> None:
        pass

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Pin the calling thread (and threads/children it starts) to ``cpus``.

    On this VM a wakeup of an idle vCPU costs tens of µs, which can dominate a
    FUSE round trip; pinning client and server to one CPU shows the software cost.
    """
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


class TimedBackend:
    """Wraps a backend and sums the wall time spent inside it (all threads)."""

    def __init__(self, inner: FileBackend) -> None:
        self.inner = inner
        self.size = inner.size
        self.busy_s = 0.0
        self._lock = threading.Lock()

    def _add(self, t0: float) -> None:
        dt = time.perf_counter() - t0
        with self._lock:
            self.busy_s += dt

    def read(self, offset: int, length: int) -> bytes:
        t0 = time.perf_counter()
        try:
            return self.inner.read(offset, length)
        finally:
            self._add(t0)

    def write(self, offset: int, data: memoryview) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.write(offset, data)
        finally:
            self._add(t0)

    def flush(self) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.flush()
        finally:
            self._add(t0)


# --------------------------------------------------------------- pyfuse3 peer
def pyfuse3_serve(backing: str | None, mountpoint: str, size: int) -> None:
    """A minimal, naive pyfuse3 passthrough (sync pread/pwrite in async handlers).

    Runs in its own process (``--pyfuse3-serve``); stops on SIGTERM.
    """
    import errno

    import pyfuse3
    import trio

    fd = os.open(backing, os.O_RDWR) if backing else -1

    class Ops(pyfuse3.Operations):
        def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            e.st_ino = inode
            e.entry_timeout = e.attr_timeout = 3600
            if inode == pyfuse3.ROOT_INODE:
                e.st_mode, e.st_nlink, e.st_size = 0o40755, 2, 4096
            else:
                e.st_mode, e.st_nlink, e.st_size = 0o100600, 1, size
            e.st_blksize = 4096
            e.st_blocks = (e.st_size + 511) // 512
            return e

        async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
            return self._attr(inode)

        async def lookup(self, parent, name, ctx=None):  # type: ignore[no-untyped-def]
            if parent == pyfuse3.ROOT_INODE and name == b"disk":
                return self._attr(2)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
            return inode

        async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
            if start_id == 0:
                pyfuse3.readdir_reply(token, b"disk", self._attr(2), 1)

        async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
            return pyfuse3.FileInfo(fh=inode, direct_io=True)

        async def read(self, fh, off, length):  # type: ignore[no-untyped-def]
            return os.pread(fd, length, off) if fd >= 0 else bytes(length)

        async def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
            return os.pwrite(fd, buf, off) if fd >= 0 else len(buf)

        async def fsync(self, fh, datasync):  # type: ignore[no-untyped-def]
            if fd >= 0:
                os.fdatasync(fd)

        async def flush(self, fh):  # type: ignore[no-untyped-def]
            pass

        async def release(self, fh):  # type: ignore[no-untyped-def]
            pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                print("ready", flush=True)
                async for _ in sigs:
                    break
            nursery.cancel_scope.cancel()

    opts = set(pyfuse3.default_options) | {"fsname=pyfuse3bench", "allow_other"}
    pyfuse3.init(Ops(), mountpoint, opts)
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


@contextlib.contextmanager
def pyfuse3_server(backing: str | None, mountpoint: str, size: int) -> Iterator[str]:
    """Run :func:`pyfuse3_serve` in a child; yield the file path; always clean up."""
    cmd = [sys.executable, "-m", "tandem.bench.fuse_overhead", "--pyfuse3-serve",
           mountpoint, "--size", str(size)]
    if backing:
        cmd += ["--backing", backing]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError("pyfuse3 server did not start")
        path = os.path.join(mountpoint, "disk")
        os.stat(path)
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if mounted_fs_type(mountpoint):
            umount(mountpoint, lazy=True)


# ------------------------------------------------------------------- the run
def fio_on_fuse_file(path: str, work: str, runtime: int) -> tuple[float, float]:
    ext = os.path.join(work, "ext4")
    os.makedirs(ext, exist_ok=True)
    with loop_device(path) as dev:
        mkfs_ext4(dev)
        with ext4_mount(dev, ext):
            return fio_iops(ext, runtime)


def run(runtime: int, with_pyfuse3: bool, threads: int) -> None:
    work = tempfile.mkdtemp(prefix="tandem-fusebench-", dir="/var/tmp")
    mnt = os.path.join(work, "fuse")
    os.makedirs(mnt)
    rows: list[tuple[str, float, float]] = []
    lat: dict[str, dict[str, float]] = {}
    try:
        local = os.path.join(work, "local")
        os.makedirs(local)
        rows.append(("(a) ext4 file, local disk", *fio_iops(local, runtime)))

        backend = FileBackend(os.path.join(work, "raw.img"), IMAGE_SIZE)
        timed = TimedBackend(backend)
        try:
            with FuseServer(timed, mnt, threads=threads) as srv:
                before, busy0 = srv.stats(), timed.busy_s
                iops, clat = fio_on_fuse_file(srv.path, work, runtime)
                after, busy = srv.stats(), timed.busy_s - busy0
        finally:
            backend.close()
        rows.append(("(b) ext4/loop/raw FUSE (FileBackend)", iops, clat))
        per_op = {k: after.get(k, 0) - before.get(k, 0) for k in ("WRITE", "FSYNC", "READ")}
        ops = iops * runtime

        for label, cpus in (("", None), (", 1 CPU", {0})):
            with pinned(cpus), FuseServer(NullBackend(IMAGE_SIZE), mnt,
                                          threads=threads) as srv:
                lat["raw FUSE" + label] = qd1_latency_us(srv.path)

        if with_pyfuse3:
            img = os.path.join(work, "py.img")
            FileBackend(img, IMAGE_SIZE).close()
            with pyfuse3_server(img, mnt, IMAGE_SIZE) as path:
                rows.append(("(c) ext4/loop/pyfuse3 passthrough", *fio_on_fuse_file(
                    path, work, runtime)))
            for label, cpus in (("", None), (", 1 CPU", {0})):
                with pinned(cpus), pyfuse3_server(None, mnt, IMAGE_SIZE) as path:
                    lat["pyfuse3" + label] = qd1_latency_us(path)
    finally:
        if mounted_fs_type(mnt):
            umount(mnt, lazy=True)
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0][1]
    print(f"\nfio randwrite 4k direct=1 fsync=1 size=64M runtime={runtime}s, "
          f"raw server threads={threads}")
    print(f"{'configuration':40} {'iops':>8} {'clat us':>8} {'vs (a)':>7}")
    for name, iops_, clat_ in rows:
        print(f"{name:40} {iops_:8.0f} {clat_:8.1f} {iops_ / base:7.2f}")
    reqs = sum(per_op.values()) / ops if ops else 0.0
    print("\nFUSE requests per fio op (raw server): "
          + ", ".join(f"{k} {v / ops:.2f}" for k, v in per_op.items() if ops)
          + f"  (total {reqs:.2f})")
    print("\nQD1 round trip, O_DIRECT 4 KiB, null backend (kernel + server), us/request:")
    for name, d in lat.items():
        print(f"  {name:16} " + "  ".join(f"{k} {v:6.1f}" for k, v in d.items()))
    if reqs:
        extra = (1e6 / rows[1][1] - 1e6 / base) / reqs
        in_backend = busy / ops * 1e6
        outside = 1e6 / rows[1][1] - in_backend
        print(f"\nper fio op on (b): {1e6 / rows[1][1]:.0f} us wall, {in_backend:.0f} us inside "
              f"FileBackend (pwrite/fdatasync), {outside:.0f} us outside it")
        print(f"  -> outside the backend per FUSE request: {outside / reqs:.1f} us "
              "(kernel ext4+loop+FUSE + Python; fio's own ext4 work included)")
        print(f"extra time per FUSE request, (b) vs (a): {extra:.1f} us "
              "(includes the backing file's own pwrite/fdatasync)")
        if len(rows) > 2:
            extra_c = (1e6 / rows[2][1] - 1e6 / rows[1][1]) / reqs
            print(f"pyfuse3 minus raw, per FUSE request: {extra_c:.1f} us")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tandem.bench.fuse_overhead")
    p.add_argument("--runtime", type=int, default=10)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--no-pyfuse3", action="store_true")
    p.add_argument("--pyfuse3-serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    p.add_argument("--backing", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=IMAGE_SIZE, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pyfuse3_serve:
        pyfuse3_serve(args.backing, args.pyfuse3_serve, args.size)
        return 0
    if os.geteuid() != 0:
        print("fuse_overhead: needs root (mount, losetup)", file=sys.stderr)
        return 2
    with_py = not args.no_pyfuse3
    if with_py:
        try:
            import pyfuse3  # noqa: F401
        except ImportError:
            print("pyfuse3 not importable: skipping (c)", file=sys.stderr)
            with_py = False
    run(args.runtime, with_py, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
