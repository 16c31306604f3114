"""Sealed frames: after the handshake, every frame is encrypted and authenticated.

Why: the handshake proves who is at the other end when the connection opens. The
frames after it carry what matters: blocks the peer writes to its disk, acks
that let the Primary tell the database a commit is safe, the disk states of the
split-brain decision. Anyone who can inject into or rewrite that TCP stream
(ARP spoofing on a shared segment, a rogue switch or VM on the replication
network) could otherwise write blocks into the copy, acknowledge writes that
were never made durable, or read the database as it replicates. DRBD leaves
this to the network (a dedicated link, or IPsec); we do not.

Each direction of a connection has its own AES-128-GCM key, derived from the
shared secret and both handshake nonces (:func:`tandem.volume.auth.frame_keys`),
so keys are fresh for every connection. The nonce is the frame's number in its
direction (the first sealed frame is 0), never sent: a frame that is dropped,
repeated, reordered or replayed from another connection fails, as does any
changed bit of the 20-byte header (additional data) or the payload. The header
stays readable (the decoder needs the length), with the 16-byte tag counted in
the length. A frame that fails poisons the decoder like any malformed frame: the
link closes with one log line, and nothing of it reaches the disk.

Pure computation, no I/O; the frames' order of sealing must be their order on
the wire (the link seals and sends under one lock).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tandem.volume.wire import HEADER, HEADER_SIZE, Buffer, RemoteProtocolError

TAG_SIZE = 16
KEY_SIZE = 16
_PAD = bytes(4)


class _FrameCipher:
    __slots__ = ("_aead", "_count")

    def __init__(self, key: bytes):
        if len(key) != KEY_SIZE:
            raise ValueError(f"a frame key is {KEY_SIZE} bytes")
        self._aead = AESGCM(key)
        self._count = 0  # frames of this direction so far: the next one's nonce

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} frames={self._count}>"

    def _nonce(self) -> bytes:
        return _PAD + self._count.to_bytes(8, "big")


class Sealer(_FrameCipher):
    """Seals the frames of one direction, in wire order."""

    __slots__ = ()

    def seal(self, parts: list[Buffer]) -> list[Buffer]:
        """One encoded frame (its parts, header first) as a sealed frame's parts."""
        head = parts[0]
        magic, version, mtype, flags, length, seq = HEADER.unpack_from(head, 0)
        if len(parts) == 1:
            payload: Buffer = memoryview(head)[HEADER_SIZE:]
        else:
            payload = b"".join([memoryview(head)[HEADER_SIZE:], *parts[1:]])
        new_head = HEADER.pack(magic, version, mtype, flags, length + TAG_SIZE, seq)
        sealed = self._aead.encrypt(self._nonce(), payload, new_head)
        self._count += 1
        return [new_head, sealed]

    def seal_frame(self, frame: bytes) -> bytes:
        return b"".join(self.seal([frame]))


class Opener(_FrameCipher):
    """Opens the sealed frames of one direction, in wire order."""

    __slots__ = ()

    def open(self, head: Buffer, sealed: Buffer) -> bytes:
        """The payload of a sealed frame; raises RemoteProtocolError if it fails."""
        if len(sealed) < TAG_SIZE:
            raise RemoteProtocolError("sealed frame shorter than its authentication tag")
        try:
            plain = self._aead.decrypt(self._nonce(), sealed, head)
        except InvalidTag:
            raise RemoteProtocolError(
                f"frame {self._count} after the handshake failed authentication (altered,"
                " replayed, reordered or injected on the way, or sealed with another key)"
            ) from None
        self._count += 1
        return plain
