"""The binlog header repair refuses anything that is not a binlog header, and
changes only the one flag."""

from __future__ import annotations

import pytest

from tandem.cluster.resources.binlog import FLAGS_OFFSET, BinlogError, last_binlog, mark_in_use

# magic, then a Format_description common header: timestamp, type 15, server id,
# size, next position, flags (0x0000: closed cleanly), then the event body.
HEADER = b"\xfebin" + b"\x01\x02\x03\x04" + bytes([15]) + b"\x01\x00\x00\x00" + b"\x00" * 8 + b"\x00\x00"


def test_sets_only_the_in_use_flag_once(tmp_path):
    body = HEADER + b"rest of the event" * 10
    (tmp_path / "mariadb-bin.000007").write_bytes(body)
    (tmp_path / "mariadb-bin.index").write_text("./mariadb-bin.000006\n./mariadb-bin.000007\n\n")
    path = last_binlog(tmp_path)
    assert path == tmp_path / "mariadb-bin.000007"
    assert mark_in_use(path) is True
    after = path.read_bytes()
    assert after[FLAGS_OFFSET:FLAGS_OFFSET + 2] == b"\x01\x00"
    assert after[:FLAGS_OFFSET] == body[:FLAGS_OFFSET] and after[FLAGS_OFFSET + 2:] == body[FLAGS_OFFSET + 2:]
    assert mark_in_use(path) is False
    assert path.read_bytes() == after


@pytest.mark.parametrize("content", [
    b"",                                        # empty
    HEADER[:FLAGS_OFFSET],                      # cut short
    b"\xfeBIN" + HEADER[4:],                    # wrong magic
    HEADER[:8] + bytes([2]) + HEADER[9:],       # first event not a Format_description
    b"x" * 100,
])
def test_anything_else_is_refused_and_left_as_it_was(tmp_path, content):
    path = tmp_path / "mariadb-bin.000001"
    path.write_bytes(content)
    with pytest.raises(BinlogError, match="not touched"):
        mark_in_use(path)
    assert path.read_bytes() == content


def test_a_missing_or_empty_index_is_a_clear_error(tmp_path):
    with pytest.raises(BinlogError, match="mariadb-bin.index: No such file"):
        last_binlog(tmp_path)
    (tmp_path / "mariadb-bin.index").write_text("\n")
    with pytest.raises(BinlogError, match="lists no binlog"):
        last_binlog(tmp_path)
    with pytest.raises(BinlogError, match="No such file"):
        mark_in_use(tmp_path / "mariadb-bin.000009")


def test_files_the_database_user_controls_are_opened_as_root_only_when_plain(tmp_path):
    """mariadbd runs as its own user and writes the index and the binlogs; the repair
    runs as root. A symlink (to any file root may write), a FIFO (which would block
    the agent) or an index naming a file outside the datadir is refused untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(HEADER + b"not a binlog of ours")
    datadir = tmp_path / "data"
    datadir.mkdir()
    (datadir / "mariadb-bin.000001").symlink_to(victim)
    with pytest.raises(BinlogError, match="Too many levels of symbolic links"):
        mark_in_use(datadir / "mariadb-bin.000001")
    assert victim.read_bytes() == HEADER + b"not a binlog of ours"
    (datadir / "mariadb-bin.index").write_text(f"{victim}\n")
    with pytest.raises(BinlogError, match="outside the datadir"):
        last_binlog(datadir)
    (datadir / "mariadb-bin.index").write_text("../victim\n")
    with pytest.raises(BinlogError, match="outside the datadir"):
        last_binlog(datadir)
    (datadir / "mariadb-bin.index").unlink()
    (datadir / "mariadb-bin.index").symlink_to(victim)
    with pytest.raises(BinlogError, match="symbolic links"):
        last_binlog(datadir)
    (datadir / "mariadb-bin.index").unlink()
    import os
    os.mkfifo(datadir / "mariadb-bin.index")
    with pytest.raises(BinlogError, match="not a regular file"):
        last_binlog(datadir)
