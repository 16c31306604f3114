"""Hypothesis strategies for the volume's messages and identifiers."""

from __future__ import annotations

from hypothesis import strategies as st

from tandem.volume import wire
from tandem.volume.genid import HISTORY_LEN, GenerationIds, SplitBrainPolicy
from tandem.volume.states import DiskState, Role

u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32_pos = st.integers(min_value=1, max_value=2**32 - 1)
names = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= wire.MAX_NAME)
nonces = st.binary(min_size=wire.MIN_NONCE, max_size=wire.MAX_NONCE)
data = st.binary(max_size=3000)

generation_ids = st.builds(
    GenerationIds,
    current=u64,
    bitmap=u64,
    history=st.lists(u64, max_size=HISTORY_LEN).map(tuple),
)


@st.composite
def verify_digests(draw: st.DrawFn) -> wire.VerifyDigests:
    size = draw(st.integers(min_value=1, max_value=64))
    digests = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=8))
    return wire.VerifyDigests(draw(u64), tuple(digests))


@st.composite
def ack_ranges(draw: st.DrawFn) -> wire.AckRange:
    first = draw(u64)
    last = draw(st.integers(min_value=first, max_value=2**64 - 1))
    return wire.AckRange(first, last)


ranges = st.lists(st.tuples(u64, st.integers(min_value=1, max_value=wire.MAX_DATA)),
                  min_size=1, max_size=8).map(tuple)


@st.composite
def data_batches(draw: st.DrawFn) -> wire.ResyncDataBatch:
    lengths = draw(st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=6))
    rs = tuple((draw(u64), n) for n in lengths)
    return wire.ResyncDataBatch(rs, draw(st.binary(min_size=sum(lengths), max_size=sum(lengths))))


messages = st.one_of(
    st.builds(wire.Hello, names, nonces),
    st.builds(wire.AuthResponse, st.binary(min_size=1, max_size=wire.MAX_MAC)),
    st.just(wire.AuthOk()),
    st.builds(
        wire.StateExchange,
        role=st.sampled_from(Role),
        disk=st.sampled_from(DiskState),
        generations=generation_ids,
        size=u64,
        bitmap_weight=u64,
        crashed_primary=st.booleans(),
        discard_my_data=st.booleans(),
        lost_leadership=st.booleans(),
        vouches_for_peer=st.booleans(),
        primary_epoch=u64,
        split_brain_policy=st.sampled_from(SplitBrainPolicy),
        block_size=st.integers(min_value=0, max_value=2**32 - 1),
    ),
    st.builds(wire.Write, u64, u64, data, st.booleans()),
    st.builds(wire.WriteAck, u64),
    ack_ranges(),
    st.builds(wire.Flush, u64),
    st.builds(wire.FlushAck, u64),
    st.builds(wire.ResyncRequest, u64, st.integers(min_value=1, max_value=wire.MAX_DATA)),
    st.builds(wire.ResyncData, u64, data),
    st.just(wire.ResyncDone()),
    st.builds(wire.ResyncRequests, ranges),
    data_batches(),
    st.builds(wire.BitmapChunk, u64, st.binary(max_size=200), st.booleans()),
    st.builds(wire.VerifyRequest, u64, st.integers(1, wire.MAX_DATA), st.just(wire.VERIFY_BLOCK)),
    verify_digests(),
    st.builds(wire.Ping, u64),
    st.builds(wire.Pong, u64),
    st.builds(
        wire.Disconnect,
        st.text(max_size=100),
    ),
)
