"""tandem's etcd takes only clients that show a certificate of the cluster's CA:
anyone else on the network could otherwise take or delete the leader key. Real
etcd, real TLS: a client without a certificate, one with a certificate of another
CA, and the plain-HTTP gateway are refused; the cluster's own certificates work."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tandem.dcs import pki
from tandem.dcs.base import DCSError
from tandem.dcs.etcd import EtcdDCS
from tandem.dcs.etcd_server import ETCDCTL, etcdctl
from tandem.dcs.gateway import read_prefix
from tests.dcs.conftest import session

pytestmark = pytest.mark.lab


def test_a_client_without_a_certificate_is_refused(etcd_ok, cluster_name):
    plain = EtcdDCS(cluster_name, "intruder", [etcd_ok.endpoint("witness")], op_timeout=2)
    with pytest.raises(DCSError):
        asyncio.run(_load_and_close(plain))
    with pytest.raises(DCSError):
        read_prefix([etcd_ok.endpoint("witness")], "/tandem/", timeout=2)  # plain HTTP
    with pytest.raises(DCSError):  # TLS, but no client certificate
        etcdctl([etcd_ok.endpoint("witness")], "get", "--prefix", "/tandem/", timeout=3,
                tls=pki.HostTls(etcd_ok.client_tls.ca, etcd_ok.tls_dir / "none.crt",
                                etcd_ok.tls_dir / "none.key"))
    proc = subprocess.run([ETCDCTL, f"--endpoints=https://{etcd_ok.endpoint('witness')}",
                           f"--cacert={etcd_ok.client_tls.ca}", "--dial-timeout=2s", "--command-timeout=3s",
                           "put", "/tandem/x", "y"], capture_output=True, text=True, timeout=20,
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0, proc.stdout


def test_a_certificate_of_another_ca_is_refused(etcd_ok, cluster_name, tmp_path):
    other = tmp_path / "other-pki"
    pki.init(other, "elsewhere", {"node1": [etcd_ok.lab.address("node1")]})
    # their client certificate, trusting our CA (so only the etcd side can refuse)
    forged = pki.HostTls(etcd_ok.client_tls.ca, other / "node1.crt", other / "node1.key")
    dcs = EtcdDCS(cluster_name, "node1", [etcd_ok.endpoint("witness")], op_timeout=2, tls=forged)
    with pytest.raises(DCSError):
        asyncio.run(_load_and_close(dcs))
    with pytest.raises(DCSError):
        read_prefix([etcd_ok.endpoint("witness")], "/tandem/", timeout=2, tls=forged)
    # and a server certificate of another CA is not trusted by our clients
    ours_trusting_them = pki.HostTls(other / "ca.crt", etcd_ok.client_tls.cert, etcd_ok.client_tls.key)
    with pytest.raises(DCSError):
        asyncio.run(_load_and_close(EtcdDCS(cluster_name, "node1", [etcd_ok.endpoint("witness")],
                                            op_timeout=2, tls=ours_trusting_them)))


def test_the_clusters_certificates_read_and_write(etcd_ok, cluster_name):
    dcs = session(etcd_ok, cluster_name, "node2", op_timeout=5)

    async def go():
        try:
            await dcs.set_standby("node2", True)
            return await dcs.load()
        finally:
            await dcs.close()
    view = asyncio.run(go())
    assert view.is_standby("node2")
    rev, kvs = read_prefix([etcd_ok.endpoint("node2")], dcs.keys.prefix, tls=etcd_ok.client_tls)
    assert rev >= view.revision and kvs


async def _load_and_close(dcs: EtcdDCS):
    try:
        return await dcs.load()
    finally:
        await dcs.close()
