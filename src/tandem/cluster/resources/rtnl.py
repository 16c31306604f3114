"""Add, replace and delete an IPv4 address over rtnetlink, synchronously, and read
when its lifetime was last set.

Why not ``ip``: a VIP's lifetime must be set right after the check that the lease
renewal it rests on is recent enough (see :mod:`tandem.cluster.resources.vip`),
and a forked ``ip`` runs whenever a loaded machine gets to it. Why not pyroute2:
its 0.9 synchronous API runs an asyncio loop of its own and refuses to run inside
the agent's. The four messages needed here are a few dozen bytes each.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct

RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x100, 0x400, 0x300
NLM_F_DUMP_INTR = 0x10  # the table changed during the dump: it may have missed entries
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


class _DumpInterrupted(Exception):
    pass


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.settimeout(2.0)
    sock.bind((0, 0))
    return sock


def _messages(reply: bytes):
    """(type, sequence, payload) of each netlink message in one datagram."""
    at = 0
    while at + _HDR.size <= len(reply):
        length, rtype, flags, rseq, _ = _HDR.unpack_from(reply, at)
        if length < _HDR.size or at + length > len(reply):
            raise OSError(errno.EPROTO, "rtnetlink: malformed reply")
        if flags & NLM_F_DUMP_INTR:
            raise _DumpInterrupted
        yield rtype, rseq, reply[at + _HDR.size:at + length]
        at += (length + 3) & ~3


def _attributes(raw: bytes):
    """(type, value) of each rtattr in `raw`."""
    at = 0
    while at + _ATTR.size <= len(raw):
        length, kind = _ATTR.unpack_from(raw, at)
        if length < _ATTR.size:
            raise OSError(errno.EPROTO, "rtnetlink: malformed attribute")
        yield kind, raw[at + _ATTR.size:at + length]
        at += (length + 3) & ~3


def _request(kind: int, flags: int, index: int, address: str, prefixlen: int,
             lifetime: int | None) -> None:
    ip = socket.inet_aton(address)
    body = (_IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index)
            + _attr(IFA_LOCAL, ip) + _attr(IFA_ADDRESS, ip))
    if lifetime is not None:
        body += _attr(IFA_CACHEINFO, _CACHEINFO.pack(lifetime, lifetime, 0, 0))
    msg = _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, SEQ, 0) + body
    with _socket() as sock:
        sock.send(msg)
        while True:
            for rtype, rseq, payload in _messages(sock.recv(65536)):
                if rtype == NLMSG_ERROR and rseq == SEQ:
                    (code,) = _ERRNO.unpack_from(payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return


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


def lifetime_set_at(address: str) -> float | None:
    """When the kernel last set `address`'s lifetime (added it, or replaced the
    lifetime), in seconds on the kernel's own clock (jiffies since boot: a constant
    offset from CLOCK_MONOTONIC, so only differences mean anything); None if no
    interface of this namespace has it, or it has no lifetime. `ip` does not print
    it. It shows exactly whether a refresh extended an address, where its removal
    time shows the kernel's lateness too (its lifetime check runs in a kworker)."""
    for _ in range(3):  # a dump the table changed under may have missed it
        with contextlib.suppress(_DumpInterrupted):
            return _lifetime_dump(address)
    raise OSError(errno.EAGAIN, "rtnetlink: the address dump was interrupted three times")


def _lifetime_dump(address: str) -> float | None:
    body = _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)
    msg = _HDR.pack(_HDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, SEQ, 0) + body
    wanted = socket.inet_aton(address)
    found = None
    with _socket() as sock:
        sock.send(msg)
        while True:
            for rtype, _, payload in _messages(sock.recv(65536)):
                if rtype == NLMSG_DONE:
                    return found
                if rtype == NLMSG_ERROR:
                    (code,) = _ERRNO.unpack_from(payload)
                    raise OSError(-code, os.strerror(-code))
                if rtype != RTM_NEWADDR:
                    continue
                attrs = dict(_attributes(payload[_IFADDR.size:]))
                info = attrs.get(IFA_CACHEINFO, b"")
                if attrs.get(IFA_LOCAL) == wanted and len(info) >= _CACHEINFO.size:
                    _, valid, _, tstamp = _CACHEINFO.unpack_from(info)
                    if valid != 0xFFFFFFFF:  # a finite lifetime
                        found = tstamp / 100  # in hundredths of a second
