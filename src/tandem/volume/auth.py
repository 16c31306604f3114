"""Mutual HMAC-SHA256 challenge-response for the replication link (no I/O).

Both sides run the same machine at once::

    A -> B  Hello(node_a, nonce_a)          B -> A  Hello(node_b, nonce_b)
    A -> B  AuthResponse(proof_a)           B -> A  AuthResponse(proof_b)
    A -> B  AuthOk  (proof_b verified)      B -> A  AuthOk  (proof_a verified)

``proof_x = HMAC(secret, label | tag_x | nonce_y | nonce_x | node_x | node_y)``
where ``y`` is the other side and ``tag_x`` says whether x opened the TCP
connection. Binding the tag, both nonces and both names in prover-first order
means a proof is useless anywhere but in this direction of this connection:
a peer that reflects our own Hello or proof back at us fails, and so does a
replay from an earlier connection (fresh nonces). A peer claiming our own node
name is refused outright.

The handshake is done when we verified the peer *and* the peer told us it
verified us (AuthOk); only then may data frames flow. Nonces come from the
caller (``secrets.token_bytes(32)``), keeping this module deterministic.

Once the peer's Hello is in, :meth:`Handshake.frame_keys` gives the two keys
that seal every later frame (seal.py), one per direction:
``key_x = HMAC(secret, frame label | tag_x | nonce_x | nonce_y | node_x | node_y)``
for the frames x sends. Another label than the proofs', so a proof seen on the
wire tells nothing about a key; fresh nonces make fresh keys per connection.

The secret is not the cluster's own but :func:`link_secret`, derived from it for
one volume of one cluster: every volume shares the cluster's secret file, so a
connection redirected to another volume's port on the same peer (ARP spoofing on
the replication network) would otherwise authenticate, and could fully sync that
volume from the wrong one.

The shared secret never appears in a repr or an exception message.
"""

from __future__ import annotations

import hashlib
import hmac

from tandem.volume.wire import (
    MAX_NONCE,
    MIN_NONCE,
    AuthOk,
    AuthResponse,
    Hello,
    Message,
    ProtocolError,
)

_LINK_SECRET_LABEL = b"tandem-volume-link-secret-v1\x00"
_LABEL = b"tandem-volume-auth-v1\x00"
_FRAME_LABEL = b"tandem-volume-frames-v1\x00"
_TAG_INITIATOR = b"I"
_TAG_ACCEPTOR = b"A"


class AuthFailed(ProtocolError):
    """The peer could not prove it knows the shared secret, or misbehaved."""


def _field(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def link_secret(cluster_secret: bytes, *, cluster: str, resource: str) -> bytes:
    """The secret one volume's link authenticates and seals with (see the module
    docstring): both sides derive it from the cluster's secret, so no new file."""
    if not cluster_secret:
        raise ValueError("the shared secret must not be empty")
    msg = b"".join((_LINK_SECRET_LABEL, _field(cluster.encode()), _field(resource.encode())))
    return hmac.new(cluster_secret, msg, hashlib.sha256).digest()


def compute_proof(
    secret: bytes,
    *,
    initiator: bool,
    my_node: str,
    peer_node: str,
    my_nonce: bytes,
    peer_nonce: bytes,
) -> bytes:
    """The proof the side described by the ``my_*`` arguments must send."""
    return _hmac(secret, _LABEL, initiator, peer_nonce, my_nonce, my_node.encode(), peer_node.encode())


def frame_key(
    secret: bytes,
    *,
    initiator: bool,
    sender_node: str,
    receiver_node: str,
    sender_nonce: bytes,
    receiver_nonce: bytes,
    size: int = 16,
) -> bytes:
    """The key that seals the frames ``sender_node`` sends on this connection."""
    return _hmac(secret, _FRAME_LABEL, initiator, sender_nonce, receiver_nonce,
                 sender_node.encode(), receiver_node.encode())[:size]


def _hmac(secret: bytes, label: bytes, initiator: bool, *fields: bytes) -> bytes:
    tag = _TAG_INITIATOR if initiator else _TAG_ACCEPTOR
    return hmac.new(secret, b"".join((label, tag, *map(_field, fields))), hashlib.sha256).digest()


class Handshake:
    """One side of the mutual authentication.

    ``hello()`` gives the first frame to send; every received auth message
    goes to ``receive()``, which returns the frames to send in answer or
    raises :class:`AuthFailed`. After a failure the object stays failed.
    """

    __slots__ = (
        "_secret",
        "_node",
        "_nonce",
        "_initiator",
        "_peer_node",
        "_peer_nonce",
        "_peer_verified",
        "_we_verified",
        "_failed",
    )

    def __init__(self, *, secret: bytes, node: str, nonce: bytes, initiator: bool):
        if not secret:
            raise ValueError("the shared secret must not be empty")
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise ValueError(f"the nonce must be {MIN_NONCE}..{MAX_NONCE} random bytes")
        self._secret = bytes(secret)
        self._node = node
        self._nonce = bytes(nonce)
        self._initiator = initiator
        self._peer_node: str | None = None
        self._peer_nonce: bytes | None = None
        self._peer_verified = False
        self._we_verified = False
        self._failed: AuthFailed | None = None

    def __repr__(self) -> str:
        return (
            f"<Handshake node={self._node!r} peer={self._peer_node!r} "
            f"peer_verified={self._peer_verified} verified_by_peer={self._we_verified}>"
        )

    @property
    def peer_node(self) -> str | None:
        """The peer's node name once its Hello arrived (verified only when done)."""
        return self._peer_node

    @property
    def done(self) -> bool:
        """Both sides proved knowledge of the secret to each other."""
        return self._peer_verified and self._we_verified

    def frame_keys(self) -> tuple[bytes, bytes]:
        """(key for the frames we send, key for those we receive); needs the
        peer's Hello."""
        if self._peer_nonce is None or self._peer_node is None:
            raise AuthFailed("no frame keys before the peer's Hello")
        me = {"sender_node": self._node, "receiver_node": self._peer_node,
              "sender_nonce": self._nonce, "receiver_nonce": self._peer_nonce}
        them = {"sender_node": self._peer_node, "receiver_node": self._node,
                "sender_nonce": self._peer_nonce, "receiver_nonce": self._nonce}
        return (frame_key(self._secret, initiator=self._initiator, **me),
                frame_key(self._secret, initiator=not self._initiator, **them))

    def hello(self) -> Hello:
        return Hello(self._node, self._nonce)

    def receive(self, msg: Message) -> list[Message]:
        """Process one received message; returns messages to send."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._receive(msg)
        except AuthFailed as exc:
            self._failed = exc
            raise

    def _receive(self, msg: Message) -> list[Message]:
        if isinstance(msg, Hello):
            return self._on_hello(msg)
        if isinstance(msg, AuthResponse):
            return self._on_response(msg)
        if isinstance(msg, AuthOk):
            if not self._peer_verified or self._we_verified:
                raise AuthFailed("unexpected AuthOk before we verified the peer")
            self._we_verified = True
            return []
        raise AuthFailed(f"{type(msg).__name__} received before authentication finished")

    def _on_hello(self, msg: Hello) -> list[Message]:
        if self._peer_nonce is not None:
            raise AuthFailed("second Hello from the peer")
        if msg.node == self._node:
            raise AuthFailed(f"peer claims our own node name {msg.node!r}")
        if hmac.compare_digest(msg.nonce, self._nonce):
            raise AuthFailed("peer echoed our own nonce (reflection)")
        if not MIN_NONCE <= len(msg.nonce) <= MAX_NONCE:
            raise AuthFailed("peer nonce has an invalid length")
        self._peer_node, self._peer_nonce = msg.node, msg.nonce
        proof = compute_proof(
            self._secret,
            initiator=self._initiator,
            my_node=self._node,
            peer_node=msg.node,
            my_nonce=self._nonce,
            peer_nonce=msg.nonce,
        )
        return [AuthResponse(proof)]

    def _on_response(self, msg: AuthResponse) -> list[Message]:
        if self._peer_nonce is None or self._peer_node is None:
            raise AuthFailed("AuthResponse before the peer's Hello")
        if self._peer_verified:
            raise AuthFailed("second AuthResponse from the peer")
        expected = compute_proof(
            self._secret,
            initiator=not self._initiator,
            my_node=self._peer_node,
            peer_node=self._node,
            my_nonce=self._peer_nonce,
            peer_nonce=self._nonce,
        )
        if not hmac.compare_digest(msg.hmac, expected):
            raise AuthFailed(
                f"peer {self._peer_node!r} failed authentication: its HMAC does not match "
                "(different shared secret, or both sides think they opened the connection)"
            )
        self._peer_verified = True
        return [AuthOk()]
