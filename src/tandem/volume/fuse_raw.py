"""A lean FUSE server that exposes one block backend as one regular file.

Why this exists: the primary exposes the replicated volume as a single file; the
kernel loop driver (``losetup --direct-io=on``) turns it into a block device for
ext4 and MariaDB. A naive pyfuse3 passthrough costs ~130 us of Python per request
and one MariaDB commit costs ~4 FUSE writes + ~3 fsyncs, so the request loop must
be lean. This server therefore speaks the FUSE protocol on ``/dev/fuse`` itself:

* ``mount(2)`` with ``fd=N`` (we are root; no fusermount, no libfuse);
* N worker threads, each with its own cloned ``/dev/fuse`` fd and a preallocated
  page-aligned buffer; a blocking ``readv`` releases the GIL, so threads overlap
  with each other and with the backend's blocking I/O;
* headers parsed with precompiled ``struct.Struct``; replies written with one
  ``os.write``/``os.writev``; no asyncio, no per-request objects beyond a few ints.

Page cache policy: OPEN replies ``FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES``
and INIT never enables the writeback cache. Loop with direct I/O already issues
O_DIRECT requests; FOPEN_DIRECT_IO makes *every* opener (losetup probes, tools,
tests) bypass the page cache too, so no stale or dirty cached copy of the volume
can exist in the kernel, and every byte goes straight to the backend. Parallel
direct writes let the kernel submit non-extending writes under a shared inode
lock; FUSE_ASYNC_DIO lets loop's async kiocbs be many requests in flight.

If the daemon dies (SIGKILL), the kernel aborts the connection: the mount stays
but every access returns ENOTCONN ("Transport endpoint is not connected").
``umount -l <mountpoint>`` (or :func:`cleanup_stale_mount`) removes it; a loop
device on the file then fails I/O with EIO and must be detached (``losetup -d``).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Protocol, runtime_checkable

from tandem.volume import fuse_abi as abi
from tandem.volume import fuse_sys

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
MAX_BACKGROUND = 16
"""Kernel limit on background requests in flight (loop's async direct I/O is
background): at most this many workers can be held by writes of the loop device."""
SPARE_WORKERS = 4
"""Workers beyond MAX_BACKGROUND: while the volume holds every write (fencing,
suspended I/O), GETATTR, OPEN, STATFS still find a free worker, so ``stat`` of
the device file, blkid and losetup answer instead of hanging."""
DEFAULT_THREADS = MAX_BACKGROUND + SPARE_WORKERS
DEFAULT_MAX_WRITE = 1 << 20
ATTR_VALID_S = 3600  # size and mode never change while mounted

_NO_REPLY = (abi.FORGET, abi.BATCH_FORGET, abi.INTERRUPT)
_OUT_ERR = abi.OUT_HEADER
_OUT_WRITE = struct.Struct("<IiQII")  # out_header + fuse_write_out


@runtime_checkable
class BlockBackend(Protocol):
    """What the FUSE file is backed by (a local file, the replicated volume...).

    Called from several worker threads at once. Raising ``OSError(e)`` from any
    method makes the kernel see ``-e`` (EIO stays EIO, never success); any other
    exception is answered with EIO. ``write`` receives a memoryview into the
    worker's reusable request buffer: it is valid only during the call, so a
    backend that queues data must copy it. ``write`` returns when the write is
    complete per the replication protocol; ``flush`` when everything written
    before it is durable locally and on the peer.

    A backend may also have ``write_async(offset, data, complete)`` (see
    :meth:`tandem.volume.replicator.Replicator.write_async`): it returns once it
    no longer needs ``data`` and calls ``complete(error)`` exactly once, from any
    thread, when the write is complete; the server then replies from that thread
    and the worker goes back to reading requests at once.
    """

    size: int

    def read(self, offset: int, length: int) -> bytes | memoryview: ...

    def write(self, offset: int, data: memoryview) -> None: ...

    def flush(self) -> None: ...


class FileBackend:
    """pread/pwrite/fdatasync on a backing file: for tests and benchmarks.

    ``size`` defaults to the file's size; if given and the file is smaller (or
    missing) it is created/extended sparsely, like a fresh block device.
    """

    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        current = os.fstat(self._fd).st_size
        if size is None:
            size = current
        elif current < size:
            os.ftruncate(self._fd, size)
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # sparse tail beyond the file's end reads as zeros
            data += bytes(length - len(data))
        return data

    def write(self, offset: int, data: memoryview) -> None:
        done = os.pwrite(self._fd, data, offset)
        while done < len(data):  # pwrite may be short; finish it
            done += os.pwrite(self._fd, data[done:], offset + done)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _errno_of(exc: BaseException) -> int:
    """The errno to send for a backend exception: never 0, EIO if unknown.

    The kernel takes ENOSYS on FSYNC (or FLUSH) as "not implemented" and answers
    every later fsync itself, with success; it refuses a reply of errno 512 or more
    and leaves its request waiting for good. Both go out as EIO."""
    if (isinstance(exc, OSError) and isinstance(exc.errno, int) and 0 < exc.errno < 512
            and exc.errno != errno.ENOSYS):
        return exc.errno
    return errno.EIO


class FuseServer:
    """Serve ``backend`` as ``<mountpoint>/<filename>`` through /dev/fuse.

    ``start()`` mounts, completes INIT and starts the workers; ``stop()``
    unmounts and joins them. Use it as a context manager. Needs root.
    """

    def __init__(self, backend: BlockBackend, mountpoint: str | os.PathLike[str],
                 filename: str = "disk", threads: int = DEFAULT_THREADS, *,
                 max_write: int = DEFAULT_MAX_WRITE, uid: int = 0, gid: int = 0,
                 mode: int = 0o600, fsname: str = "tandem", nice: int | None = None,
                 max_background: int = MAX_BACKGROUND) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        if not 1 <= max_background <= 0xFFFF:
            raise ValueError("max_background must be in 1..65535")
        if "/" in filename or filename in ("", ".", ".."):
            raise ValueError(f"bad filename {filename!r}")
        if max_write < PAGE or max_write % PAGE:
            raise ValueError("max_write must be a multiple of the page size")
        self.backend = backend
        self.mountpoint = os.path.abspath(os.fspath(mountpoint))
        self.filename = filename
        self.threads = threads
        self.max_background = max_background
        self.max_write = max_write
        self.fsname = fsname
        self.nice = nice  # per worker thread (see tandem.volume.link.HOT_THREAD_NICE)
        self._uid, self._gid, self._mode = uid, gid, mode
        self.io_flusher: bool | None = None
        self.proto_minor = 0
        self._session_fd = -1
        self._fds: list[int] = []
        self._workers: list[threading.Thread] = []
        self._counts: list[list[int]] = []
        self._mounted = False
        # Replies of asynchronous writes come from other threads: written only while
        # their fd is open (a closed fd's number may already belong to another file).
        self._reply_lock = threading.Lock()
        self._open_fds: set[int] = set()
        self._name = os.fsencode(filename)
        self._conn_id: int | None = None
        self._build_replies()

    # ------------------------------------------------------------------ lifecycle
    @property
    def path(self) -> str:
        """Absolute path of the exposed file."""
        return os.path.join(self.mountpoint, self.filename)

    def __enter__(self) -> FuseServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        """Mount, negotiate INIT, spawn the workers; return once the file is served."""
        if self._session_fd >= 0:
            raise RuntimeError("already started")
        if not os.path.isdir(self.mountpoint):
            raise FileNotFoundError(errno.ENOENT, "mountpoint is not a directory",
                                    self.mountpoint)
        self._session_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            fuse_sys.fuse_mount(self._session_fd, self.mountpoint, fstype=self.fsname,
                                source=self.fsname, max_read=self.max_write,
                                uid=self._uid, gid=self._gid)
            self._mounted = True
            buf = mmap.mmap(-1, self._bufsize())
            try:
                self._handle_init(buf, timeout)
            finally:
                buf.close()
            self._fds = [self._session_fd]
            self._fds += [fuse_sys.clone_fd(self._session_fd) for _ in range(self.threads - 1)]
            self._counts = [[0] * (abi.MAX_OPCODE + 1) for _ in self._fds]
            self._open_fds = set(self._fds)
            for i, fd in enumerate(self._fds):
                t = threading.Thread(target=self._serve, args=(fd, self._counts[i]),
                                     name=f"fuse-{i}", daemon=True)
                self._workers.append(t)
                t.start()
            st = os.stat(self.path)  # round trip through the kernel: serving works
            self._conn_id = os.minor(os.stat(self.mountpoint).st_dev)
            if st.st_size != self.backend.size:
                raise RuntimeError(f"kernel reports size {st.st_size}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Unmount (lazily if busy), join the workers and close every fd.

        Robust when the kernel side already went away (not mounted, aborted
        connection). If the file is still in use (e.g. a loop device is still
        attached) a lazy unmount would keep the connection alive, so after the
        timeout the connection is aborted through fusectl when it is mounted.
        """
        if self._mounted:
            self._mounted = False
            try:
                fuse_sys.umount(self.mountpoint)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    log.warning("fuse: %s busy, unmounting lazily", self.mountpoint)
                    self._try(fuse_sys.umount, self.mountpoint, lazy=True)
                elif e.errno not in (errno.EINVAL, errno.ENOENT):
                    log.warning("fuse: umount %s: %s", self.mountpoint, e)
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._workers):
            self._abort_connection()
            for t in self._workers:
                t.join(1.0)
        alive = {t.name for t in self._workers if t.is_alive()}
        if alive:
            log.error("fuse: workers still blocked after stop: %s", sorted(alive))
        fds = self._fds or ([self._session_fd] if self._session_fd >= 0 else [])
        for i, fd in enumerate(fds):
            # Never close an fd a live thread still reads: the number could be reused.
            if i < len(self._workers) and self._workers[i].is_alive():
                continue
            with self._reply_lock:
                self._open_fds.discard(fd)
                self._try(os.close, fd)
        self._fds, self._workers, self._session_fd = [], [], -1

    def stats(self) -> dict[str, int]:
        """Requests served per opcode name since start (summed over workers)."""
        out: dict[str, int] = {}
        for op in range(abi.MAX_OPCODE + 1):
            n = sum(c[op] for c in self._counts)
            if n:
                out[abi.OPCODE_NAMES.get(op, f"op{op}")] = n
        return out

    @staticmethod
    def _try(fn: object, *args: object, **kw: object) -> None:
        try:
            fn(*args, **kw)  # type: ignore[operator]
        except OSError as e:
            log.debug("fuse: ignored %s", e)

    def _abort_connection(self) -> None:
        """Abort our connection through fusectl: pending and future requests fail,
        blocked workers get ENODEV. fusectl is mounted privately if needed."""
        if self._conn_id is None:
            return
        log.warning("fuse: aborting connection %s", self._conn_id)
        try:
            fuse_sys.abort_connection(self._conn_id)
        except OSError as e:
            log.warning("fuse: abort failed: %s", e)

    def _bufsize(self) -> int:
        # One page for headers (the payload of a WRITE starts page aligned, see
        # _serve) plus max_write; the kernel needs >= header + write_in + max_write.
        return PAGE + self.max_write + PAGE

    # ----------------------------------------------------------------------- INIT
    def _handle_init(self, buf: mmap.mmap, timeout: float) -> None:
        fd = self._session_fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            raise TimeoutError("no FUSE_INIT from the kernel")
        n = os.readv(fd, [buf])
        _, opcode, unique, *_ = abi.IN_HEADER.unpack_from(buf, 0)
        if opcode != abi.INIT or n < abi.IN_HEADER.size + abi.INIT_IN.size:
            raise RuntimeError(f"expected FUSE_INIT, got opcode {opcode}")
        major, minor, max_readahead, kflags = abi.INIT_IN.unpack_from(buf, abi.IN_HEADER.size)
        if major != abi.KERNEL_MAJOR or minor < abi.MIN_MINOR:
            os.write(fd, _OUT_ERR.pack(16, -errno.EPROTO, unique))
            raise RuntimeError(f"unsupported FUSE protocol {major}.{minor}")
        self.proto_minor = min(minor, abi.OUR_MINOR)
        want = (abi.ASYNC_READ | abi.BIG_WRITES | abi.MAX_PAGES | abi.PARALLEL_DIROPS
                | abi.ASYNC_DIO)
        flags = kflags & want
        max_pages = self.max_write // PAGE
        if not flags & abi.MAX_PAGES:
            self.max_write = min(self.max_write, 32 * PAGE)
        body = abi.INIT_OUT.pack(abi.KERNEL_MAJOR, self.proto_minor, max_readahead, flags,
                                 self.max_background, self.max_background * 3 // 4,
                                 self.max_write, 1, max_pages, 0, 0)
        os.writev(fd, [_OUT_ERR.pack(16 + len(body), 0, unique), body])
        log.info("fuse: INIT kernel 7.%d, using 7.%d, flags %#x, max_write %d",
                 minor, self.proto_minor, flags, self.max_write)

    # --------------------------------------------------------------- fixed replies
    def _build_replies(self) -> None:
        now = int(time.time())
        size = self.backend.size
        self._file_attr = abi.ATTR.pack(abi.FILE_ID, size, (size + 511) // 512, now, now,
                                        now, 0, 0, 0, stat.S_IFREG | self._mode, 1,
                                        self._uid, self._gid, 0, 4096, 0)
        self._root_attr = abi.ATTR.pack(abi.ROOT_ID, 4096, 8, now, now, now, 0, 0, 0,
                                        stat.S_IFDIR | 0o755, 2, self._uid, self._gid,
                                        0, 4096, 0)
        self._attrs = {abi.ROOT_ID: self._root_attr, abi.FILE_ID: self._file_attr}
        self._entry_body = abi.ENTRY_OUT_HEAD.pack(abi.FILE_ID, 0, ATTR_VALID_S,
                                                   ATTR_VALID_S, 0, 0) + self._file_attr
        self._open_file = abi.OPEN_OUT.pack(
            0, abi.FOPEN_DIRECT_IO | abi.FOPEN_PARALLEL_DIRECT_WRITES | abi.FOPEN_NOFLUSH, 0)
        self._open_dir = abi.OPEN_OUT.pack(0, 0, 0)
        blocks = size // 4096
        self._statfs = abi.STATFS_OUT.pack(blocks, 0, 0, 2, 0, 4096, 255, 4096, 0)
        entries = ((abi.ROOT_ID, b".", abi.DT_DIR), (abi.ROOT_ID, b"..", abi.DT_DIR),
                   (abi.FILE_ID, self._name, abi.DT_REG))
        self._dirents = [
            abi.DIRENT_HEAD.pack(ino, i + 1, len(name), typ) + name
            + bytes(-(abi.DIRENT_HEAD.size + len(name)) % 8)
            for i, (ino, name, typ) in enumerate(entries)
        ]

    # ------------------------------------------------------------- request loop
    def _serve(self, fd: int, counts: list[int]) -> None:
        """Worker: read a request into the reusable buffer, handle it, reply.

        The request is read at offset ``PAGE - 80`` so that a WRITE's payload
        (after the 40-byte in_header and 40-byte write_in) starts exactly on a
        page boundary: a backend may hand it to O_DIRECT I/O without copying.
        """
        ok = fuse_sys.set_io_flusher()
        if self.nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError as e:
                log.debug("fuse: cannot set worker niceness: %s", e)
        if self.io_flusher is None:
            self.io_flusher = ok
            if not ok:
                log.warning("fuse: PR_SET_IO_FLUSHER not permitted (needs CAP_SYS_RESOURCE): under"
                            " memory pressure, reclaim in this daemon may wait on writeback"
                            " through its own volume; give the daemon that capability")
        buf = mmap.mmap(-1, self._bufsize())
        mv = memoryview(buf)
        base = PAGE - abi.WRITE_DATA_OFFSET
        target = [mv[base:]]
        backend = self.backend
        size = backend.size
        unpack_in = abi.IN_HEADER.unpack_from
        unpack_rw = abi.RW_IN.unpack_from
        pack_err = _OUT_ERR.pack
        pack_write = _OUT_WRITE.pack
        rw_off = base + abi.IN_HEADER.size
        write, writev, readv = os.write, os.writev, os.readv
        write_async = getattr(backend, "write_async", None)
        reply_async = self._reply_async
        try:
            while True:
                try:
                    n = readv(fd, target)
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue  # ENOENT: the request was interrupted before we got it
                    if e.errno != errno.ENODEV:  # ENODEV: unmounted or aborted
                        log.error("fuse: read /dev/fuse: %s", e)
                    return
                _, opcode, unique, nodeid, _, _, _, _, _ = unpack_in(buf, base)
                counts[opcode if opcode < abi.MAX_OPCODE else abi.MAX_OPCODE] += 1
                try:
                    if opcode == abi.WRITE:
                        _, off, length, _, _, _, _ = unpack_rw(buf, rw_off)
                        if off >= size:
                            write(fd, pack_err(16, -errno.ENOSPC, unique))
                            continue
                        if off + length > size:
                            length = size - off
                        if write_async is not None:
                            try:
                                write_async(off, mv[PAGE:PAGE + length],
                                            partial(reply_async, fd, unique, off, length))
                            except Exception as e:  # noqa: BLE001 - refused before it started
                                self._log_backend_error("write", off, length, e)
                                write(fd, pack_err(16, -_errno_of(e), unique))
                            continue
                        try:
                            backend.write(off, mv[PAGE:PAGE + length])
                        except Exception as e:  # noqa: BLE001 - every failure goes to the kernel
                            self._log_backend_error("write", off, length, e)
                            write(fd, pack_err(16, -_errno_of(e), unique))
                        else:
                            write(fd, pack_write(24, 0, unique, length, 0))
                    elif opcode == abi.READ:
                        _, off, length, _, _, _, _ = unpack_rw(buf, rw_off)
                        length = max(0, min(length, size - off))
                        try:
                            data = backend.read(off, length) if length else b""
                        except Exception as e:  # noqa: BLE001
                            self._log_backend_error("read", off, length, e)
                            write(fd, pack_err(16, -_errno_of(e), unique))
                        else:
                            writev(fd, [pack_err(16 + len(data), 0, unique), data])
                    elif opcode == abi.FSYNC:
                        try:
                            backend.flush()
                        except Exception as e:  # noqa: BLE001
                            self._log_backend_error("flush", 0, 0, e)
                            write(fd, pack_err(16, -_errno_of(e), unique))
                        else:
                            write(fd, pack_err(16, 0, unique))
                    elif opcode not in _NO_REPLY:
                        err, body = self._other(opcode, nodeid, buf, base, n)
                        if err:
                            write(fd, pack_err(16, -err, unique))
                        else:
                            writev(fd, [pack_err(16 + len(body), 0, unique), body])
                except OSError as e:
                    # Writing the reply failed: ENOENT means the kernel gave up on the
                    # request (interrupted); ENODEV means the connection is gone.
                    if e.errno == errno.ENODEV:
                        return
                    if e.errno != errno.ENOENT:
                        log.error("fuse: reply to opcode %d: %s", opcode, e)
        finally:
            target[0].release()
            mv.release()
            try:
                buf.close()
            except BufferError:  # a backend kept a view of the buffer
                log.warning("fuse: request buffer still referenced at exit")

    def _reply_async(self, fd: int, unique: int, off: int, length: int,
                     error: Exception | None) -> None:
        """Complete an asynchronous WRITE (any thread): reply on the worker's fd,
        where the kernel keeps the request."""
        if error is None:
            msg = _OUT_WRITE.pack(24, 0, unique, length, 0)
        else:
            self._log_backend_error("write", off, length, error)
            msg = _OUT_ERR.pack(16, -_errno_of(error), unique)
        with self._reply_lock:
            if fd not in self._open_fds:
                return  # stopped: the kernel ended the request with the connection
            try:
                os.write(fd, msg)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENODEV):
                    log.error("fuse: reply to a write: %s", e)

    def _log_backend_error(self, op: str, off: int, length: int, e: Exception) -> None:
        if isinstance(e, OSError):
            log.debug("fuse: backend %s(%d, %d): %s", op, off, length, e)
        else:
            log.error("fuse: backend %s(%d, %d) raised", op, off, length, exc_info=e)

    def _other(self, opcode: int, nodeid: int, buf: mmap.mmap, base: int,
               n: int) -> tuple[int, bytes]:
        """Everything but READ/WRITE/FSYNC: (errno, reply body); errno 0 = success."""
        arg = base + abi.IN_HEADER.size
        if opcode == abi.GETATTR or opcode == abi.SETATTR:
            attr = self._attrs.get(nodeid)
            if attr is None:
                return errno.ENOENT, b""
            if opcode == abi.SETATTR:
                valid, _, _, new_size = abi.SETATTR_IN_HEAD.unpack_from(buf, arg)
                if valid & abi.FATTR_SIZE and new_size != self.backend.size:
                    return errno.EPERM, b""  # a block device does not change size
            return 0, abi.ATTR_OUT_HEAD.pack(ATTR_VALID_S, 0, 0) + attr
        if opcode == abi.LOOKUP:
            name = bytes(buf[arg:base + n]).rstrip(b"\0")
            if nodeid == abi.ROOT_ID and name == self._name:
                return 0, self._entry_body
            return errno.ENOENT, b""
        if opcode == abi.OPEN:
            return (0, self._open_file) if nodeid == abi.FILE_ID else (errno.EISDIR, b"")
        if opcode == abi.OPENDIR:
            return (0, self._open_dir) if nodeid == abi.ROOT_ID else (errno.ENOTDIR, b"")
        if opcode == abi.READDIR:
            _, off, room, _, _, _, _ = abi.RW_IN.unpack_from(buf, arg)
            out = b""
            for ent in self._dirents[off:]:
                if len(out) + len(ent) > room:
                    break
                out += ent
            return 0, out
        if opcode in (abi.FLUSH, abi.RELEASE, abi.RELEASEDIR, abi.FSYNCDIR, abi.ACCESS,
                      abi.DESTROY):
            return 0, b""
        if opcode == abi.STATFS:
            return 0, self._statfs
        if opcode == abi.FALLOCATE:
            return errno.EOPNOTSUPP, b""
        # xattrs, CREATE, MKNOD, locks, ioctl, ...: ENOSYS also tells the kernel
        # never to ask again for most of them.
        return errno.ENOSYS, b""


def cleanup_stale_mount(mountpoint: str) -> bool:
    """Lazily unmount a FUSE mount whose daemon died (ENOTCONN); True if done."""
    fstype = fuse_sys.mounted_fs_type(mountpoint)
    if fstype is None or not fstype.startswith("fuse"):
        return False
    try:
        os.statvfs(mountpoint)  # STATFS always reaches the daemon; stat may be cached
        return False  # alive
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return False
    fuse_sys.umount(mountpoint, lazy=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tandem.volume.fuse_raw BACKING MOUNTPOINT``: serve until SIGTERM."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="python -m tandem.volume.fuse_raw")
    p.add_argument("backing")
    p.add_argument("mountpoint")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--filename", default="disk")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    backend = FileBackend(args.backing, args.size)
    try:
        with FuseServer(backend, args.mountpoint, args.filename, args.threads) as srv:
            print(f"serving {srv.path}", flush=True)
            done.wait()
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
