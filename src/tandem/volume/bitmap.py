"""Dirty bitmap and activity log: which blocks a resync must copy.

:class:`DirtyBitmap` has one bit per block (4 KiB by default) of the volume,
set for every block written while the peer could not receive it. A 10 GiB
volume needs 2.6 M bits = 320 KiB, so every operation works on whole bytes
with slicing, ``int.from_bytes`` and regular-expression scans, which run in
C; no operation loops over individual bits in Python. Bit ``i`` lives in byte
``i // 8`` at position ``i % 8`` (least significant bit first).

:class:`ActivityLog` is the set of "hot" extents (4 MiB by default) that may
have writes in flight. It is persisted before a write enters an extent that is
not in it, so after a crash of the Primary the node marks exactly those
extents dirty instead of the whole disk.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator

BLOCK_SIZE = 4096
EXTENT_SIZE = 4 << 20

_NONZERO = re.compile(rb"[^\x00]")
_NOT_FULL = re.compile(rb"[^\xff]")
_SER_HEADER = struct.Struct("!4sBIQ")  # magic, version, block size, nbits
_SER_MAGIC = b"TNBM"


class DirtyBitmap:
    """One dirty bit per block of a volume of ``size`` bytes.

    Setting marks every block the byte range touches; clearing only clears
    blocks the range covers entirely (a partial clear would lose the other
    half's dirtiness). The last block may be short; a range reaching the end
    of the volume covers it.
    """

    __slots__ = ("size", "block_size", "nbits", "_bits", "_weight")

    def __init__(self, size: int, block_size: int = BLOCK_SIZE):
        if size < 0 or block_size <= 0:
            raise ValueError("size must be >= 0 and block_size > 0")
        self.size = size
        self.block_size = block_size
        self.nbits = -(-size // block_size)
        self._bits = bytearray((self.nbits + 7) // 8)
        self._weight = 0

    def __repr__(self) -> str:
        return f"<DirtyBitmap size={self.size} block={self.block_size} dirty={self._weight}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirtyBitmap):
            return NotImplemented
        return (self.size, self.block_size, self._bits) == (
            other.size,
            other.block_size,
            other._bits,
        )

    __hash__ = None  # type: ignore[assignment]

    # --- weight and block tests ---

    @property
    def weight(self) -> int:
        """Number of dirty blocks."""
        return self._weight

    @property
    def dirty_bytes(self) -> int:
        """Bytes a full resync of the dirty blocks copies (last block clipped)."""
        if self._weight and self.test(self.nbits - 1):
            return self._weight * self.block_size - (self.nbits * self.block_size - self.size)
        return self._weight * self.block_size

    def test(self, block: int) -> bool:
        return bool(self._bits[block >> 3] >> (block & 7) & 1)

    def is_dirty(self, offset: int, length: int = 1) -> bool:
        """True if any block touched by the byte range is dirty."""
        first, last = self._touched(offset, length)
        return first <= last and self._count(first, last + 1) > 0

    # --- mutation ---

    def set_range(self, offset: int, length: int) -> int:
        """Mark the blocks the range touches; returns how many became dirty."""
        first, last = self._touched(offset, length)
        return self._fill(first, last + 1, True)

    def clear_range(self, offset: int, length: int) -> int:
        """Clear the blocks the range covers; returns how many became clean."""
        self._check(offset, length)
        first = -(-offset // self.block_size)
        end = self.nbits if offset + length >= self.size else (offset + length) // self.block_size
        return self._fill(first, end, False)

    def set_all(self) -> None:
        self._fill(0, self.nbits, True)

    def clear_all(self) -> None:
        self._bits[:] = bytes(len(self._bits))
        self._weight = 0

    def union(self, other: DirtyBitmap) -> None:
        """OR a peer's bitmap into this one (both sides' changes get resynced)."""
        if (other.size, other.block_size) != (self.size, self.block_size):
            raise ValueError("bitmaps of different geometry cannot be merged")
        self.or_bytes(0, other._bits)

    def or_bytes(self, byte_offset: int, data: bytes | bytearray | memoryview) -> None:
        """OR raw bitmap bytes in at ``byte_offset`` (a received BitmapChunk)."""
        end = byte_offset + len(data)
        if byte_offset < 0 or end > len(self._bits):
            raise ValueError("bitmap chunk outside the bitmap")
        if not data:
            return
        mine = int.from_bytes(self._bits[byte_offset:end], "little")
        merged = mine | int.from_bytes(data, "little")
        if end == len(self._bits) and self.nbits % 8:
            merged &= (1 << ((len(data) - 1) * 8 + self.nbits % 8)) - 1
        self._bits[byte_offset:end] = merged.to_bytes(len(data), "little")
        self._weight += merged.bit_count() - mine.bit_count()

    # --- iteration ---

    def dirty_runs(self, max_length: int | None = None) -> Iterator[tuple[int, int]]:
        """Yield ``(offset, length)`` byte ranges of consecutive dirty blocks.

        Runs longer than ``max_length`` (rounded down to whole blocks, at
        least one) are split, so each run fits in one resync request. The
        scan skips clean and fully dirty bytes with C-level regex searches.
        """
        bs = self.block_size
        max_blocks = None if max_length is None else max(1, max_length // bs)
        block = 0
        while True:
            start = self._next_bit(block, True)
            if start >= self.nbits:
                return
            end = self._next_bit(start, False)
            while start < end:
                stop = end if max_blocks is None else min(end, start + max_blocks)
                offset = start * bs
                yield offset, min(stop * bs, self.size) - offset
                start = stop
            block = end

    def _next_bit(self, block: int, value: bool) -> int:
        """First block >= ``block`` whose bit equals ``value`` (nbits if none)."""
        bits = self._bits
        if block >= self.nbits:
            return self.nbits
        idx, shift = block >> 3, block & 7
        byte = bits[idx] if value else bits[idx] ^ 0xFF
        byte >>= shift
        if byte:
            return min(self.nbits, block + ((byte & -byte).bit_length() - 1))
        match = (_NONZERO if value else _NOT_FULL).search(bits, idx + 1)
        if match is None:
            return self.nbits
        idx = match.start()
        byte = bits[idx] if value else bits[idx] ^ 0xFF
        return min(self.nbits, idx * 8 + (byte & -byte).bit_length() - 1)

    # --- raw access and serialisation ---

    @property
    def raw(self) -> bytes:
        """The uncompressed bits (``ceil(nbits / 8)`` bytes)."""
        return bytes(self._bits)

    def chunks(self, chunk_size: int = 64 << 10, *, skip_clean: bool = True) -> Iterator[tuple[int, bytes]]:
        """Yield ``(byte_offset, raw bytes)`` slices, skipping all-zero ones."""
        view = memoryview(self._bits)
        try:
            for pos in range(0, len(self._bits), chunk_size):
                piece = view[pos : pos + chunk_size]
                if skip_clean and _NONZERO.search(piece) is None:
                    continue
                yield pos, piece.tobytes()
        finally:
            view.release()

    def to_bytes(self) -> bytes:
        """A compact, self-describing encoding (zlib; a clean bitmap is tiny)."""
        head = _SER_HEADER.pack(_SER_MAGIC, 1, self.block_size, self.nbits)
        return head + zlib.compress(self._bits, 1)

    @classmethod
    def from_bytes(cls, data: bytes, size: int, block_size: int = BLOCK_SIZE) -> DirtyBitmap:
        """Decode :meth:`to_bytes` output for a volume of ``size`` bytes."""
        bm = cls(size, block_size)
        if len(data) < _SER_HEADER.size:
            raise ValueError("serialized bitmap truncated")
        magic, version, bsize, nbits = _SER_HEADER.unpack_from(data)
        if (magic, version, bsize, nbits) != (_SER_MAGIC, 1, block_size, bm.nbits):
            raise ValueError("serialized bitmap does not match this volume's geometry")
        dec = zlib.decompressobj()
        try:
            raw = dec.decompress(data[_SER_HEADER.size :], len(bm._bits) + 1)
        except zlib.error as exc:
            raise ValueError(f"serialized bitmap corrupt: {exc}") from None
        if len(raw) != len(bm._bits) or not dec.eof or dec.unused_data:
            raise ValueError("serialized bitmap has the wrong length")
        bm.load_raw(raw)
        return bm

    def load_raw(self, raw: bytes | bytearray | memoryview) -> None:
        """Replace all bits with ``raw`` (as returned by :attr:`raw`)."""
        if len(raw) != len(self._bits):
            raise ValueError("raw bitmap has the wrong length")
        if self.nbits % 8 and raw and raw[-1] >> (self.nbits % 8):
            raise ValueError("raw bitmap has bits set beyond the end of the volume")
        self._bits[:] = raw
        self._weight = int.from_bytes(self._bits, "little").bit_count()

    # --- internals ---

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside the volume of {self.size} bytes")

    def _touched(self, offset: int, length: int) -> tuple[int, int]:
        self._check(offset, length)
        if length == 0:
            return 0, -1
        return offset // self.block_size, (offset + length - 1) // self.block_size

    def _count(self, start: int, end: int) -> int:
        """Set bits in blocks [start, end)."""
        if start >= end:
            return 0
        lo, hi = start >> 3, (end + 7) >> 3
        word = int.from_bytes(self._bits[lo:hi], "little")
        word >>= start & 7
        word &= (1 << (end - start)) - 1
        return word.bit_count()

    def _fill(self, start: int, end: int, value: bool) -> int:
        """Set or clear blocks [start, end); returns how many bits changed."""
        if start >= end:
            return 0
        before = self._count(start, end)
        bits = self._bits
        lo, hi = start >> 3, end >> 3
        if lo == hi:
            mask = ((1 << (end - start)) - 1) << (start & 7)
            bits[lo] = bits[lo] | mask if value else bits[lo] & ~mask
        else:
            if start & 7:
                mask = (0xFF << (start & 7)) & 0xFF
                bits[lo] = bits[lo] | mask if value else bits[lo] & ~mask
                lo += 1
            bits[lo:hi] = (b"\xff" if value else b"\x00") * (hi - lo)
            if end & 7:
                mask = (1 << (end & 7)) - 1
                bits[hi] = bits[hi] | mask if value else bits[hi] & ~mask
        changed = (end - start - before) if value else before
        self._weight += changed if value else -changed
        return changed


class ActivityLogFull(Exception):
    """Every slot holds an extent with writes in flight; wait for completions."""


class ActivityLog:
    """The hot extents of the Primary, least recently used first.

    ``touch()`` is called before a write is issued: it pins the extents the
    write covers and returns those that were not yet in the log -- the caller
    must persist :meth:`extents` (the whole set, since an eviction may have
    happened too) before letting the write proceed. ``complete()`` unpins
    them when the write finished on both sides. Only unpinned extents are
    evicted, so an extent with a write in flight is always in the persisted
    log: that is what makes marking the log dirty after a crash sufficient.
    """

    __slots__ = ("slots", "extent_size", "_lru")

    def __init__(self, slots: int, extent_size: int = EXTENT_SIZE, extents: tuple[int, ...] = ()):
        if slots <= 0 or extent_size <= 0:
            raise ValueError("slots and extent_size must be positive")
        if len(extents) > slots:
            raise ValueError("more extents than slots")
        self.slots = slots
        self.extent_size = extent_size
        self._lru: OrderedDict[int, int] = OrderedDict((e, 0) for e in extents)

    def _span(self, offset: int, length: int) -> range:
        if offset < 0 or length <= 0:
            raise ValueError("a write range needs offset >= 0 and length > 0")
        return range(offset // self.extent_size, (offset + length - 1) // self.extent_size + 1)

    def victims(self, offset: int, length: int) -> list[int]:
        """The extents that ``touch(offset, length)`` would evict (least recently used
        first); raises ActivityLogFull as touch would.

        An evicted extent is no longer resynced after a crash of this Primary, so
        every write that completed in it must be durable on both disks first: the
        caller flushes before it touches when this is not empty (DRBD keeps an
        extent in its log until the peer's barrier ack, and writes a log transaction
        with a cache flush first, for the same reason)."""
        span = self._span(offset, length)
        if len(span) > self.slots:
            raise ValueError(f"a write spanning {len(span)} extents exceeds {self.slots} slots")
        new = sum(1 for e in span if e not in self._lru)
        if not new:
            return []  # the usual case, a hot extent: no walk over every slot (per write)
        free = self.slots - len(self._lru)
        evictable = [e for e, pins in self._lru.items() if pins == 0 and e not in span]
        if new > free + len(evictable):
            raise ActivityLogFull(f"all {self.slots} activity log slots have writes in flight")
        return evictable[: max(0, new - free)]

    def touch(self, offset: int, length: int) -> list[int]:
        """Pin the extents of a write; return the extent numbers newly added."""
        span = self._span(offset, length)
        new = [e for e in span if e not in self._lru]
        for victim in self.victims(offset, length) if new else ():
            del self._lru[victim]
        for e in span:
            self._lru[e] = self._lru.get(e, 0) + 1
            self._lru.move_to_end(e)
        return new

    def touch_hot(self, offset: int, length: int) -> bool:
        """Pin the extent of a write that lies in one extent already in the log and
        return True (nothing to evict, nothing new to persist); else change nothing
        and return False (use :meth:`victims` and :meth:`touch`). The usual write
        hits a hot extent: this is its whole activity-log cost."""
        es = self.extent_size
        e = offset // es
        lru = self._lru
        if offset < 0 or length <= 0 or e != (offset + length - 1) // es or e not in lru:
            return False
        lru[e] += 1
        lru.move_to_end(e)
        return True

    def untouch(self, offset: int, length: int, new: list[int]) -> None:
        """Undo a ``touch()`` whose log could not be persisted: unpin its extents and
        drop the ones it added (`new`, as touch returned them). Left in, they would
        look hot to the next write, which would then skip the log on disk that does
        not hold them (a crash would not resync it)."""
        self.complete(offset, length)
        for e in new:
            if self._lru.get(e) == 0:
                del self._lru[e]

    def complete(self, offset: int, length: int) -> None:
        """Unpin the extents of a finished write."""
        for e in self._span(offset, length):
            pins = self._lru.get(e, 0)
            if pins <= 0:
                raise ValueError(f"extent {e} completed more often than touched")
            self._lru[e] = pins - 1

    def forget_idle(self) -> tuple[int, ...]:
        """Drop every extent no write holds; returns what is left (to persist).

        For a demotion, which empties the log on disk: an extent left here but
        not on disk would make the next term's first write into it look hot, so
        it would never be logged, and a crash would not resync it (volume sim
        seed 314725: switchover, switchover back, crash of the new Primary,
        replicas differing for good)."""
        for e in [e for e, pins in self._lru.items() if pins == 0]:
            del self._lru[e]
        return tuple(self._lru)

    def extents(self) -> tuple[int, ...]:
        """Extent numbers in the log, least recently used first (what to persist)."""
        return tuple(self._lru)

    def in_flight(self) -> int:
        """Number of pins held (writes times extents not yet completed)."""
        return sum(self._lru.values())

    def ranges(self, volume_size: int) -> list[tuple[int, int]]:
        """Byte ranges of the logged extents, clipped to the volume.

        After a Primary crash, mark these dirty in the bitmap: the writes in
        flight at the crash may have reached one disk and not the other.
        """
        out = []
        for e in sorted(self._lru):
            start = e * self.extent_size
            if start < volume_size:
                out.append((start, min(self.extent_size, volume_size - start)))
        return out
