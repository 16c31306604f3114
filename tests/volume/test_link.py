"""The link driver's send path: frames with file data (sendfile) arrive intact."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tandem.volume import wire
from tandem.volume.link import Link
from tandem.volume.peer import PeerConfig


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        a = socket.create_connection(srv.getsockname(), timeout=5)
        b, _ = srv.accept()
    finally:
        srv.close()
    b.settimeout(5)
    return a, b


def test_sendfile_parts_arrive_as_the_file_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "backing"
    path.write_bytes(data)
    a, b = _tcp_pair()
    fd = os.open(path, os.O_RDONLY)
    link = Link(a, PeerConfig(node="n1", secret=b"s" * 32, nonce=b"n" * 16, initiator=True),
                lambda *_: None, lambda *_: None)
    try:
        msgs = [wire.ResyncData(0, wire.FileSlice(fd, 0, 1 << 20)),
                wire.ResyncData(5, data[5:4101]),  # a copied one in between
                wire.ResyncData(2 << 20, wire.FileSlice(fd, 2 << 20, 1 << 20))]
        parts = [p for m in msgs for p in wire.encode_parts(m)]
        link._send_raw(parts)
        want = sum(len(p) for p in parts)
        assert link.bytes_sent == want
        got = bytearray()
        while len(got) < want:
            chunk = b.recv(1 << 20)
            assert chunk
            got += chunk
        dec = wire.FrameDecoder()
        dec.feed(bytes(got))
        out = []
        while (ev := dec.next_event()) is not wire.NEED_DATA:
            out.append(ev)
        assert [(m.offset, bytes(m.data)) for m in out] == [
            (0, data[: 1 << 20]), (5, data[5:4101]), (2 << 20, data[2 << 20 : 3 << 20])]
    finally:
        os.close(fd)
        a.close()
        b.close()
