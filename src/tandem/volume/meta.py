"""The per-node metadata file: what this disk is worth, kept crash-safe.

The file holds two slots of equal, fixed size (so the second slot's position
is known even when the first is garbage). Each update goes to the slot not
holding the newest state, with a sequence number one higher, then
``fdatasync``. A slot is::

    magic "TNDMETA1" | seq u64 | body length u32 | blake2b-16(seq, length, body)
    body = JSON length u32 | JSON fields | raw dirty bitmap

A crash in the middle of a write leaves that slot torn -- its checksum fails
-- and the other slot still holds the previous state, so ``open()`` always
finds the last completed update. Only if both slots fail does it give up,
with an error naming both reasons.

This is the storage layer (synchronous file I/O), not protocol logic. Every
update rewrites the whole slot (320 KiB of bitmap for a 10 GiB volume), so
batch changes: :meth:`MetaStore.update` takes several fields at once and
:meth:`MetaStore.mark_dirty_and_persist` marks many ranges with one write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from tandem.errors import TandemError
from tandem.volume.bitmap import BLOCK_SIZE, EXTENT_SIZE, DirtyBitmap
from tandem.volume.genid import GenerationIds
from tandem.volume.states import DiskState

log = logging.getLogger("tandem.volume")

_MAGIC = b"TNDMETA1"
_SLOT_HEADER = struct.Struct("!8sQI16s")
_DIGEST = 16
_ALIGN = 4096
_MAX_JSON = 64 << 10
#: 2 added ``primary_epoch`` (session 15), 3 ``peer_had_all`` (session 25). Older
#: formats are read (their missing fields take their defaults) and written back in
#: this one; an older tandem refuses this one clearly (NewerFormat).
FORMAT_VERSION = 3
OLDEST_READABLE = 1


class MetaError(TandemError):
    """The metadata file cannot be used (both slots corrupt, wrong format...)."""


class NewerFormat(ValueError):
    """An intact slot written by a newer tandem: not corruption, and no reason to
    fall back to the older slot (that would roll the disk's state back)."""


@dataclass(frozen=True, slots=True)
class MetaState:
    """A snapshot of everything in the metadata file except the bitmap."""

    node: str
    size: int
    block_size: int = BLOCK_SIZE
    disk: DiskState = DiskState.INCONSISTENT
    generations: GenerationIds = GenerationIds()
    peer_outdated: bool = False
    #: the cluster's leader epoch of this node's latest promotion by the agent (0:
    #: never): which side was Primary most recently, across crashes and restarts
    primary_epoch: int = 0
    #: set while Primary; still set at open() means the Primary crashed
    primary: bool = False
    al_extents: tuple[int, ...] = ()
    al_slots: int = 61
    al_extent_size: int = EXTENT_SIZE
    #: the disk state when the backing store failed (what `attach` restores)
    failed_from: DiskState | None = None
    #: the disk failed while an UpToDate peer took every write, and this node has not
    #: been Primary nor the source of a resync since: the peer may be recorded UpToDate
    #: (unfence), also after a restart (Replicator._peer_has_every_write)
    peer_had_all: bool = False
    seq: int = 0

    def to_json(self) -> bytes:
        data = asdict(self)
        data["disk"] = self.disk.value
        data["failed_from"] = self.failed_from.value if self.failed_from else None
        data["generations"] = {
            "current": self.generations.current,
            "bitmap": self.generations.bitmap,
            "history": list(self.generations.history),
        }
        data["al_extents"] = list(self.al_extents)
        data["version"] = FORMAT_VERSION
        del data["seq"]
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, seq: int) -> MetaState:
        data = json.loads(raw)
        version = data.pop("version", None)
        if type(version) is not int or version < OLDEST_READABLE:  # bool is no version
            raise ValueError(f"unknown metadata format version {version!r}")
        if version > FORMAT_VERSION:
            raise NewerFormat(f"format {version}, newer than this tandem reads"
                              f" ({OLDEST_READABLE}-{FORMAT_VERSION})")
        gen = data.pop("generations")
        return cls._build(data, gen, seq)

    @classmethod
    def _build(cls, data: dict[str, Any], gen: dict[str, Any], seq: int) -> MetaState:
        known = {f.name for f in fields(cls)} - {"generations", "seq"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown metadata fields {sorted(unknown)}")
        data["disk"] = DiskState(data["disk"])
        if data.get("failed_from") is not None:
            data["failed_from"] = DiskState(data["failed_from"])
        data["al_extents"] = tuple(data["al_extents"])
        return cls(
            **data,
            generations=GenerationIds(gen["current"], gen["bitmap"], tuple(gen["history"])),
            seq=seq,
        )


def _slot_size(size: int, block_size: int) -> int:
    bitmap_bytes = (-(-size // block_size) + 7) // 8
    need = _SLOT_HEADER.size + 4 + _MAX_JSON + bitmap_bytes
    return -(-need // _ALIGN) * _ALIGN


def _digest(seq: int, body: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST, person=b"tandem-meta")
    h.update(struct.pack("!QI", seq, len(body)))
    h.update(body)
    return h.digest()


class MetaStore:
    """The metadata file of one resource on one node.

    ``state`` is an immutable snapshot; ``bitmap`` is the live dirty bitmap,
    persisted (as is) with every :meth:`update`. Not thread-safe: one owner.
    """

    def __init__(self, path: Path, fd: int, slot_size: int, state: MetaState, bitmap: DirtyBitmap, slot: int):
        self.path = path
        self._fd = fd
        self._slot_size = slot_size
        self._state = state
        self.bitmap = bitmap
        self._slot = slot  # slot holding the newest state
        #: the file said "Primary" when opened: this node crashed as Primary
        self.crashed_primary = state.primary
        #: (number, offset, length) of ranges whose bits a sync target cleared after
        #: writing their data, before an fdatasync made that data durable: every
        #: write of the live bitmap sets them again, until `durable_upto` drops them
        self._undurable: deque[tuple[int, int, int]] = deque()
        self._undurable_seq = 0

    def __repr__(self) -> str:
        return f"<MetaStore {str(self.path)!r} seq={self._state.seq} disk={self._state.disk}>"

    @property
    def state(self) -> MetaState:
        return self._state

    # --- construction ---

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size: int,
        node: str,
        *,
        block_size: int = BLOCK_SIZE,
        disk: DiskState = DiskState.INCONSISTENT,
        generations: GenerationIds = GenerationIds(),
        al_slots: int = 61,
        al_extent_size: int = EXTENT_SIZE,
        overwrite: bool = False,
    ) -> MetaStore:
        """Write a new metadata file atomically (temp file, fsync, rename)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise MetaError(f"{path}: metadata file exists; refusing to overwrite it")
        state = MetaState(
            node=node,
            size=size,
            block_size=block_size,
            disk=disk,
            generations=generations,
            al_slots=al_slots,
            al_extent_size=al_extent_size,
        )
        bitmap = DirtyBitmap(size, block_size)
        slot_size = _slot_size(size, block_size)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, 2 * slot_size)
            store = cls(path, fd, slot_size, state, bitmap, slot=1)
            store._write(state)  # slot 0, seq 1
            store._write(store._state)  # slot 1, seq 2
            os.rename(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> MetaStore:
        """Load the newest valid slot; raise MetaError if neither is valid."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise MetaError(f"{path}: cannot open metadata file: {exc.strerror}") from None
        try:
            total = os.fstat(fd).st_size
            if total == 0 or total % (2 * _ALIGN):
                raise MetaError(f"{path}: not a tandem metadata file, or one truncated or extended"
                                f" (size {total})")
            slot_size = total // 2
            candidates, problems = [], []
            for slot in (0, 1):
                try:
                    state, bitmap = cls._read_slot(fd, slot, slot_size)
                    candidates.append((state.seq, slot, state, bitmap))
                except NewerFormat as exc:
                    raise MetaError(
                        f"{path}: slot {slot} holds metadata {exc}: a newer tandem wrote it;"
                        " run that version on this node again. Do not recreate the metadata:"
                        " that throws away what this disk is worth"
                    ) from None
                except (ValueError, KeyError, TypeError, struct.error) as exc:
                    problems.append(f"slot {slot}: {exc}")
            if not candidates:
                raise MetaError(
                    f"{path}: metadata is corrupt in both slots ({'; '.join(problems)}); "
                    "recreate it and resync this node from its peer"
                )
            _seq, slot, state, bitmap = max(candidates, key=lambda c: c[0])
            if total != 2 * _slot_size(state.size, state.block_size):
                # Cut or extended: the second slot was read at the wrong offset and
                # looked "never written", so the first would be taken silently, one
                # update (a fence, an Inconsistent mark) older than the truth.
                raise MetaError(
                    f"{path}: the file is {total} bytes but metadata for a {state.size}-byte"
                    f" volume takes {2 * _slot_size(state.size, state.block_size)}: it was"
                    " truncated or extended; restore it, or recreate it and resync this node"
                    " from its peer")
            if problems and "bad magic" not in problems[0]:  # never written: a new file
                log.warning("%s: using slot %d (seq %d); the other is unusable: %s", path, slot,
                            state.seq, "; ".join(problems))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, slot_size, state, bitmap, slot)

    @staticmethod
    def _read_slot(fd: int, slot: int, slot_size: int) -> tuple[MetaState, DirtyBitmap]:
        data = os.pread(fd, slot_size, slot * slot_size)
        if len(data) < _SLOT_HEADER.size:
            raise ValueError("short read")
        magic, seq, length, digest = _SLOT_HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("bad magic (never written or overwritten)")
        end = _SLOT_HEADER.size + length
        if end > len(data):
            raise ValueError("body length beyond the slot")
        body = data[_SLOT_HEADER.size : end]
        if _digest(seq, body) != digest:
            raise ValueError("checksum mismatch (torn or corrupted write)")
        (jlen,) = struct.unpack_from("!I", body)
        state = MetaState.from_json(body[4 : 4 + jlen], seq)
        bitmap = DirtyBitmap(state.size, state.block_size)
        bitmap.load_raw(body[4 + jlen :])
        return state, bitmap

    # --- persistence ---

    def update(self, **changes: Any) -> MetaState:
        """Apply field changes and persist them (and the bitmap) atomically."""
        if "seq" in changes:
            raise ValueError("seq is managed by the store")
        if "size" in changes or "block_size" in changes:
            raise ValueError("resizing is not supported")
        if "al_extents" in changes:
            changes["al_extents"] = tuple(changes["al_extents"])
        return self._write(replace(self._state, **changes))

    def mark_dirty_and_persist(self, ranges: list[tuple[int, int]], **changes: Any) -> MetaState:
        """Mark byte ranges dirty and persist once (with optional field changes)."""
        for offset, length in ranges:
            self.bitmap.set_range(offset, length)
        return self.update(**changes)

    # --- bits a sync target cleared -------------------------------------------------
    # The sync source clears what it has sent, so the target's saved bitmap is all
    # that says which blocks it still lacks: no bit may reach the metadata cleared
    # before its data is durable, whoever writes the metadata (a link loss, a failed
    # disk, a stop, the next connect), not only the resync checkpoints.

    def clear_written(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Clear the bits of ranges whose data was just written, not yet synced. Called
        with the replicator's io_lock held (its one writer); noted before cleared, and
        `_write` reads the bits before the notes, so no range is missed by both."""
        ranges = list(ranges)
        for off, n in ranges:
            self._undurable_seq += 1
            self._undurable.append((self._undurable_seq, off, n))
        for off, n in ranges:
            self.bitmap.clear_range(off, n)

    def undurable_mark(self) -> int:
        """The last clear so far: an fdatasync of the data begun after this call makes
        every clear up to it durable (then `durable_upto(mark)`)."""
        return self._undurable_seq

    def durable_upto(self, mark: int) -> None:
        while self._undurable and self._undurable[0][0] <= mark:
            self._undurable.popleft()

    def _bitmap_to_write(self) -> bytes:
        raw = self.bitmap.raw
        pending = list(self._undurable)  # after the bits: see clear_written
        if not pending:
            return raw
        copy = DirtyBitmap(self.bitmap.size, self.bitmap.block_size)
        copy.load_raw(raw)
        for _, off, n in pending:
            copy.set_range(off, n)
        return copy.raw

    def persist(self, bitmap_raw: bytes | None = None) -> MetaState:
        """Write the current state and bitmap again (after bitmap changes).

        ``bitmap_raw`` (a :attr:`DirtyBitmap.raw` snapshot taken earlier) is
        written instead of the live bitmap: a resync target checkpoints the bits
        it cleared before an fdatasync, not those it cleared since."""
        return self._write(self._state, bitmap_raw)

    def _write(self, state: MetaState, bitmap_raw: bytes | None = None) -> MetaState:
        state = replace(state, seq=self._state.seq + 1)
        js = state.to_json()
        if len(js) > _MAX_JSON:
            raise MetaError(f"{self.path}: metadata fields too large ({len(js)} bytes)")
        raw = self._bitmap_to_write() if bitmap_raw is None else bitmap_raw
        if len(raw) != (self.bitmap.nbits + 7) // 8:
            raise MetaError(f"{self.path}: bitmap snapshot of {len(raw)} bytes does not fit")
        body = struct.pack("!I", len(js)) + js + raw
        head = _SLOT_HEADER.pack(_MAGIC, state.seq, len(body), _digest(state.seq, body))
        slot = self._slot ^ 1
        buf = head + body
        written = os.pwrite(self._fd, buf, slot * self._slot_size)
        if written != len(buf):
            raise MetaError(f"{self.path}: short write to the metadata file")
        os.fdatasync(self._fd)
        self._slot, self._state = slot, state
        return state

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
