"""The API's derived fields: a VM's guest address."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st

from tandem.mgmt.views import vm_ip


@given(st.integers(min_value=0, max_value=10**12),
       st.sampled_from([("10.1.0.0/16", "10.1.0.1"), ("192.168.7.0/24", "192.168.7.1"),
                        ("10.9.8.0/29", "10.9.8.6"), ("172.16.0.0/12", "172.16.0.1")]))
def test_a_vm_address_is_a_host_of_its_network_and_never_its_gateway(seq, network):
    """It ran past the /16 at the 64,000th VM ever deployed (10.1.256.2), which is no
    address at all: libcloud's list_nodes raised on it (review 35)."""
    cidr, gateway = network
    addr = vm_ip(seq, cidr, gateway)
    socket.inet_aton(addr)  # what libcloud's is_private_subnet calls
    net = ipaddress.ip_network(cidr)
    ip = ipaddress.ip_address(addr)
    assert ip in net and ip not in (net.network_address, net.broadcast_address)
    assert addr != gateway


def test_the_first_addresses_are_what_they_always_were():
    assert [vm_ip(s) for s in range(3)] == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert vm_ip(64000) == "10.1.250.2"  # was 10.1.256.2
    assert len({vm_ip(s, "10.9.8.0/29", "10.9.8.6") for s in range(100)}) == 5  # 6 hosts less the gateway
