"""The VIP lifetime/takeover timing rule: a frozen holder's address is gone before
a new holder adds it (the campaign saw 0.1-1.3 s of two holders with TTL+1)."""

from __future__ import annotations

import pytest

from tandem.cluster.dbgroup import VIP_REFRESH_SLACK, vip_lifetime, vip_takeover_grace

KERNEL_LATE = 0.25  # an expired IPv4 address is removed up to HZ/4 late


@pytest.mark.parametrize("ttl", [1, 1.5, 2, 2.5, 3, 5, 10, 30, 60])
def test_old_address_expires_before_the_new_holder_adds_it(ttl):
    # Worst case: the key frees exactly ttl after the last keepalive etcd accepted,
    # and the frozen holder set its address's lifetime as late after that keepalive
    # as it may (VIP_REFRESH_SLACK: a refresh or a start any later does not happen).
    old_gone = VIP_REFRESH_SLACK + vip_lifetime(ttl) + KERNEL_LATE
    new_up = ttl + vip_takeover_grace(ttl)
    assert old_gone <= new_up
    assert vip_lifetime(ttl) >= 1  # the kernel takes whole seconds, 0 means forever


@pytest.mark.parametrize("ttl", [2, 3, 10])
def test_no_takeover_delay_when_the_ttl_leaves_room(ttl):
    assert vip_takeover_grace(ttl) == 0


def test_the_renewing_holder_keeps_its_address():
    # renewals come every ttl/3; a lifetime shorter than that would flap the VIP
    for ttl in (1, 2, 3, 10):
        assert vip_lifetime(ttl) > ttl / 3
