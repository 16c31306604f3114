"""The key layout and the snapshot decoding, without etcd."""

from __future__ import annotations

import pytest

from tandem.dcs.keys import Keys, RawKV, encode, view_from_kvs
from tandem.dcs.view import ClusterView, Leader, Member, NodeRole, Switchover, VolumeState
from tandem.volume.states import DiskState

K = Keys("prod")


def kv(key: str, value: object, create: int = 5, mod: int = 6, lease: int = 0) -> RawKV:
    raw = value if isinstance(value, bytes) else encode(value)
    return RawKV(K.prefix + key, raw, create, mod, lease)


def test_encoding_is_canonical_so_transactions_can_compare_values():
    assert encode({"node": "n1", "epoch": 2}) == encode({"epoch": 2, "node": "n1"})
    assert encode({"node": "n1", "epoch": 2}) == b'{"epoch":2,"node":"n1"}'


def test_names_with_a_slash_are_refused():
    with pytest.raises(ValueError):
        Keys("a/b")
    with pytest.raises(ValueError):
        K.member("x/y")


def test_view_round_trips_every_key():
    m = Member("node1", NodeRole.PRIMARY, DiskState.UP_TO_DATE, True, False, "http://n1:8008", "Connected")
    vol = VolumeState("r0", (("node1", DiskState.UP_TO_DATE), ("node2", DiskState.OUTDATED)), "g7")
    view = view_from_kvs(K, 42, [
        kv("leader", {"node": "node1", "epoch": 3}, create=17, lease=99),
        kv("epoch", {"epoch": 3}, mod=17),
        kv("members/node1", m.to_value(), mod=20),
        kv("volume/r0", vol.to_value(), mod=21),
        kv("switchover", Switchover("node1", "node2").to_value(), mod=22),
        kv("maintenance", {}),
        kv("standby/node2", {}),
        kv("cleanup/node1", {"at": 1.0}, mod=23),
        kv("history", [{"epoch": 3, "node": "node1", "reason": "crash of node2", "at": 1.5}]),
    ])
    assert view.revision == 42 and view.leader == Leader("node1", 3, 17, 99)
    assert view.epoch == 3 and view.epoch_revision == 17
    assert view.member("node1") == Member(**{**_fields(m), "revision": 20})
    assert view.volume("r0").disk("node2") is DiskState.OUTDATED and view.volume("r0").revision == 21
    assert view.switchover == Switchover("node1", "node2", 22)
    assert view.maintenance and view.is_standby("node2") and not view.is_standby("node1")
    assert view.last_failover.reason == "crash of node2"
    assert view.cleanup_revision("node1") == 23 and view.cleanup_revision("node2") == 0
    assert not view.up_to_date_everywhere("node2") and view.up_to_date_everywhere("node1")


def test_garbage_never_breaks_the_view_and_a_garbage_leader_still_holds_the_key():
    view = view_from_kvs(K, 9, [
        kv("leader", b"\xff not json", create=3),
        kv("members/node2", b"[1,2"),
        kv("volume/r0", {"disks": {"node1": "Sideways"}}),
        kv("members/node1", {"role": "astronaut", "disk_state": "UpToDate"}),
    ])
    assert not view.is_unlocked() and view.leader.revision == 3
    assert view.member("node2") is None
    assert view.member("node1").role is NodeRole.STOPPED
    # An unknown disk state is never promotable.
    assert view.volume("r0").disk("node1") is DiskState.OUTDATED


@pytest.mark.parametrize(("key", "value"), [
    ("epoch", {"epoch": None}),
    ("epoch", {"epoch": "7"}),
    ("leader", {"node": "node1", "epoch": "x"}),
    ("leader", {"node": "node1", "epoch": None}),
    ("fence", {"node": "node1", "revision": None, "at": "yesterday"}),
    ("history", [{"epoch": 1, "node": "node1", "at": None}, {"epoch": "2", "at": [1]}]),
    ("volume/r0", {"disks": ["node1", "UpToDate"]}),
    ("members/node1", {"role": "replica", "sync_percent": "half", "healthy": "false"}),
    ("switchover", {"leader": 5, "candidate": {"node": "node2"}}),
    ("members/node2", b"[" * 100_000 + b"]" * 100_000),
])
def test_a_field_of_the_wrong_type_never_breaks_the_view(key, value):
    """Each of these (a hand repair with etcdctl, a newer or broken writer) raised
    TypeError, ValueError or RecursionError out of the view: every agent's HA loop
    then failed before it decided anything, for good (review 23)."""
    view = view_from_kvs(K, 9, [kv("leader", {"node": "node1", "epoch": 3}, create=4, lease=8),
                                kv("members/node3", {"role": "replica", "healthy": True}),
                                kv(key, value)])
    assert view.leader is not None and view.leader.node == "node1"
    assert view.member("node3").healthy
    if key == "fence":
        assert view.fenced_token() is None, "a fence with no revision applies to no key"
    if key.startswith("members/node1"):
        m = view.member("node1")
        assert m.sync_percent is None and not m.healthy, "the string 'false' is not healthy"
    if key == "switchover":
        assert view.switchover.leader is None and view.switchover.candidate is None
    if key == "volume/r0":
        assert view.volume("r0").disks == ()
    assert view.epoch >= (0 if key == "leader" else 3)


def test_a_key_that_is_not_utf8_is_read_not_raised():
    """etcd keys are bytes: one written by hand under the prefix made every read of the
    cluster fail ("malformed range reply"), `tandem status` with it."""
    import base64

    from tandem.dcs.gateway import parse_range

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    reply = {"header": {"revision": "9"}, "kvs": [
        {"key": b64(K.prefix.encode() + b"members/\xff\xfe"), "value": b64(encode({"role": "replica"})),
         "create_revision": "3", "mod_revision": "3"},
        {"key": b64((K.prefix + "leader").encode()), "value": b64(encode({"node": "node1", "epoch": 2})),
         "create_revision": "4", "mod_revision": "4", "lease": "8"}]}
    revision, kvs = parse_range(reply)
    view = view_from_kvs(K, revision, kvs)
    assert view.leader.node == "node1" and len(view.members) == 1


def test_empty_view():
    v = ClusterView.empty("prod")
    assert v.is_unlocked() and v.up_to_date_everywhere("node1") and v.last_failover is None


def _fields(m: Member) -> dict:
    return {f: getattr(m, f) for f in m.__slots__}


def test_a_fence_record_applies_only_to_the_leadership_it_names():
    fence = {"node": "node1", "revision": 5, "by": "node2", "agent": "lab", "reason": "crashed", "at": 1.0}
    leader = kv("leader", {"node": "node1", "epoch": 2}, create=5, lease=77)
    view = view_from_kvs(K, 9, [leader, kv("fence", fence)])
    assert view.fence.by == "node2" and view.fenced_token() == 5
    # A newer key (another create_revision) or another holder: the old record does not apply.
    newer = kv("leader", {"node": "node1", "epoch": 3}, create=8, lease=78)
    assert view_from_kvs(K, 9, [newer, kv("fence", fence)]).fenced_token() is None
    other = kv("leader", {"node": "node2", "epoch": 2}, create=5, lease=77)
    assert view_from_kvs(K, 9, [other, kv("fence", fence)]).fenced_token() is None
    assert view_from_kvs(K, 9, [kv("fence", fence)]).fenced_token() is None
    garbage = view_from_kvs(K, 9, [leader, kv("fence", b"{oops")])
    assert garbage.fence is None and garbage.fenced_token() is None


def test_the_epoch_floor_is_the_highest_epoch_a_member_saw_and_garbage_lifts_nothing():
    def view(*members: object) -> ClusterView:
        return view_from_kvs(K, 9, [kv("epoch", {"epoch": 3}, mod=4),
                                    *(kv(f"members/node{i}", m) for i, m in enumerate(members, 1))])

    assert view({"role": "replica", "epoch_seen": 12}, {"role": "replica", "epoch_seen": 7}).epoch == 12
    assert view({"role": "replica", "epoch_seen": 2}).epoch == 3, "the counter itself is higher"
    for garbage in ("99", True, -5, 3.5e9, None, [99]):
        assert view({"role": "replica", "epoch_seen": garbage}).epoch == 3, garbage
    assert view().with_epoch_floor(2).epoch == 3 and view().with_epoch_floor(8).epoch == 8
    assert view().with_epoch_floor(8).epoch_revision == 4, "the compare still guards the counter"
