"""The read-only etcd JSON gateway reader the lab polls with: it must return what
the gRPC DCS client wrote, byte for byte, and fail with one clear line."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tandem.dcs.base import DCSError
from tandem.dcs.gateway import parse_range, prefix_end, read_prefix
from tandem.dcs.keys import Keys
from tests.dcs.conftest import session


def test_prefix_end_is_the_first_key_after_the_prefix():
    assert prefix_end(b"/tandem/c1/") == b"/tandem/c10"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


@pytest.mark.parametrize("reply", [{}, {"header": {}}, {"header": {"revision": "x"}},
                                   {"header": {"revision": "3"}, "kvs": [{"value": "AA=="}]},
                                   {"header": {"revision": "3"}, "kvs": [{"key": "!!notbase64"}]},
                                   {"header": {"revision": "3"}, "kvs": "nope"}])
def test_a_malformed_reply_is_one_dcs_error(reply):
    with pytest.raises(DCSError, match="malformed range reply"):
        parse_range(reply)


def test_no_endpoint_answering_is_one_dcs_error_naming_each():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DCSError, match=f"127.0.0.1:{port}: ConnectionError"):
        read_prefix([f"127.0.0.1:{port}"], "/tandem/x/", timeout=0.5)


@pytest.mark.lab
def test_the_gateway_reads_what_the_dcs_wrote(etcd_ok, cluster_name):
    dcs = session(etcd_ok, cluster_name, "node1", op_timeout=5)
    other = Keys(cluster_name + "x")  # a cluster whose name extends ours: not in our prefix

    async def write():
        o = session(etcd_ok, other.cluster, "node1", op_timeout=5)
        try:
            await o._call("put", lambda c: c.put((other.prefix + "k").encode(), b"other"))
        finally:
            await o.close()
        try:
            await dcs.set_standby("node2", True)
            await dcs._call("put", lambda c: c.put((dcs.keys.prefix + "bin").encode(), bytes(range(256))))
            return (await dcs.load()).revision
        finally:
            await dcs.close()
    revision = asyncio.run(write())
    got_rev, kvs = read_prefix([etcd_ok.endpoint("witness")], Keys(cluster_name).prefix,
                               tls=etcd_ok.client_tls)
    assert got_rev >= revision
    by_key = {kv.key: kv for kv in kvs}
    assert by_key[Keys(cluster_name).prefix + "bin"].value == bytes(range(256))
    assert Keys(cluster_name).standbys + "node2" in by_key
    assert all(k.startswith(Keys(cluster_name).prefix) for k in by_key)
    assert all(kv.mod_revision > 0 for kv in kvs)
