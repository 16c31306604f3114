"""Mutual HMAC handshake."""

from __future__ import annotations

import pytest

from tandem.volume.auth import AuthFailed, Handshake, compute_proof, link_secret
from tandem.volume.wire import AuthOk, AuthResponse, Hello, Message, Ping

SECRET = b"correct horse battery staple"
NONCE_A = b"A" * 32
NONCE_B = b"B" * 32


def pair(secret_a: bytes = SECRET, secret_b: bytes = SECRET) -> tuple[Handshake, Handshake]:
    a = Handshake(secret=secret_a, node="node1", nonce=NONCE_A, initiator=True)
    b = Handshake(secret=secret_b, node="node2", nonce=NONCE_B, initiator=False)
    return a, b


def run(a: Handshake, b: Handshake) -> None:
    """Deliver messages both ways until nothing is left (in-order links)."""
    to_b: list[Message] = [a.hello()]
    to_a: list[Message] = [b.hello()]
    while to_a or to_b:
        if to_b:
            to_a.extend(b.receive(to_b.pop(0)))
        if to_a:
            to_b.extend(a.receive(to_a.pop(0)))


def test_right_secret_authenticates_both_ways() -> None:
    a, b = pair()
    assert not a.done and not b.done
    run(a, b)
    assert a.done and b.done
    assert a.peer_node == "node2" and b.peer_node == "node1"


def test_wrong_secret_fails_with_a_clear_reason_and_no_secret() -> None:
    a, b = pair(secret_b=b"a different secret!!")
    with pytest.raises(AuthFailed) as info:
        run(a, b)
    text = str(info.value) + repr(info.value) + info.value.reason
    assert "does not match" in text and "secret" in text
    assert SECRET.decode() not in text and "a different secret" not in text
    assert not a.done and not b.done


def test_failed_handshake_stays_failed() -> None:
    a, b = pair(secret_b=b"other")
    a.receive(b.hello())
    (proof_b,) = b.receive(a.hello())
    with pytest.raises(AuthFailed):
        a.receive(proof_b)
    with pytest.raises(AuthFailed, match="does not match"):  # the first error, again
        a.receive(AuthOk())


def test_secret_not_in_repr() -> None:
    a, _ = pair()
    assert "horse" not in repr(a)
    assert not hasattr(a, "__dict__")  # slots only: nothing else prints the secret


def test_reflected_proof_is_rejected() -> None:
    a, b = pair()
    a.receive(b.hello())
    # An attacker without the secret reflects a's own proof back at it.
    own = compute_proof(
        SECRET, initiator=True, my_node="node1", peer_node="node2", my_nonce=NONCE_A, peer_nonce=NONCE_B
    )
    with pytest.raises(AuthFailed, match="does not match"):
        a.receive(AuthResponse(own))


def test_both_initiators_fail() -> None:
    a = Handshake(secret=SECRET, node="node1", nonce=NONCE_A, initiator=True)
    b = Handshake(secret=SECRET, node="node2", nonce=NONCE_B, initiator=True)
    with pytest.raises(AuthFailed):
        run(a, b)


def test_peer_with_our_name_or_nonce_is_refused() -> None:
    a, _ = pair()
    with pytest.raises(AuthFailed, match="own node name"):
        a.receive(Hello("node1", NONCE_B))
    a2, _ = pair()
    with pytest.raises(AuthFailed, match="nonce"):
        a2.receive(Hello("node2", NONCE_A))


@pytest.mark.parametrize("msg", [AuthOk(), AuthResponse(b"x" * 32), Ping(1)])
def test_out_of_order_messages_fail(msg: Message) -> None:
    a, _ = pair()
    with pytest.raises(AuthFailed):
        a.receive(msg)


def test_second_hello_fails() -> None:
    a, b = pair()
    a.receive(b.hello())
    with pytest.raises(AuthFailed, match="second Hello"):
        a.receive(b.hello())


def test_short_nonce_or_empty_secret_rejected_locally() -> None:
    with pytest.raises(ValueError):
        Handshake(secret=SECRET, node="n", nonce=b"short", initiator=True)
    with pytest.raises(ValueError):
        Handshake(secret=b"", node="n", nonce=NONCE_A, initiator=True)


def test_each_volume_of_each_cluster_has_its_own_link_secret() -> None:
    """Every volume reads the cluster's one secret file: a connection redirected to
    another volume's port on the same peer must not authenticate there."""
    r0 = link_secret(SECRET, cluster="prod", resource="r0")
    assert r0 == link_secret(SECRET, cluster="prod", resource="r0")  # both sides agree
    others = {link_secret(SECRET, cluster="prod", resource="r1"),
              link_secret(SECRET, cluster="test", resource="r0"),
              link_secret(SECRET, cluster="prodr", resource="0"),  # fields are length-prefixed
              link_secret(b"another cluster secret", cluster="prod", resource="r0")}
    assert r0 not in others and SECRET not in others | {r0} and len(others) == 4
    a, b = pair(secret_a=r0, secret_b=link_secret(SECRET, cluster="prod", resource="r1"))
    with pytest.raises(AuthFailed):
        run(a, b)
    with pytest.raises(ValueError):
        link_secret(b"", cluster="prod", resource="r0")
