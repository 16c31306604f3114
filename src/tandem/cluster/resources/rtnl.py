"""Add, replace and delete an IPv4 address over rtnetlink, synchronously.

Why not ``ip``: a VIP's lifetime must be set right after the check that the lease
renewal it rests on is recent enough (see :mod:`tandem.cluster.resources.vip`),
and a forked ``ip`` runs whenever a loaded machine gets to it. Why not pyroute2:
its 0.9 synchronous API runs an asyncio loop of its own and refuses to run inside
the agent's. The three messages needed here are a few dozen bytes each.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

RTM_NEWADDR, RTM_DELADDR = 20, 21
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO = 1, 2, 6

_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, interface
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_CACHEINFO = struct.Struct("=IIII")  # ifa_cacheinfo: preferred, valid, cstamp, tstamp
_ERRNO = struct.Struct("=i")

SEQ = 1  # one request per socket: the reply to match is the only one


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _request(kind: int, flags: int, index: int, address: str, prefixlen: int,
             lifetime: int | None) -> None:
    ip = socket.inet_aton(address)
    body = (_IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index)
            + _attr(IFA_LOCAL, ip) + _attr(IFA_ADDRESS, ip))
    if lifetime is not None:
        body += _attr(IFA_CACHEINFO, _CACHEINFO.pack(lifetime, lifetime, 0, 0))
    msg = _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, SEQ, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        sock.send(msg)
        while True:
            reply = sock.recv(65536)
            at = 0
            while at + _HDR.size <= len(reply):
                length, rtype, _, rseq, _ = _HDR.unpack_from(reply, at)
                if length < _HDR.size:
                    raise OSError(errno.EPROTO, "rtnetlink: malformed reply")
                if rtype == NLMSG_ERROR and rseq == SEQ:
                    (code,) = _ERRNO.unpack_from(reply, at + _HDR.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                at += (length + 3) & ~3


def set_address(interface: str, address: str, prefixlen: int, lifetime: int | None) -> None:
    """Add `address`/`prefixlen` to `interface`, or replace an existing one's lifetime
    (valid and preferred, whole seconds; None: forever). Raises OSError."""
    _request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, socket.if_nametoindex(interface),
             address, prefixlen, lifetime)


def delete_address(interface: str, address: str, prefixlen: int) -> bool:
    """Remove the address; False if it was not there. Raises OSError otherwise."""
    try:
        _request(RTM_DELADDR, 0, socket.if_nametoindex(interface), address, prefixlen, None)
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            return False
        raise
    return True
