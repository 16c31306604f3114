"""Resource configs: strict, and every problem is one line naming the key."""

from __future__ import annotations

import pytest

from tandem.cluster.resources import build, parse_resources
from tandem.cluster.resources.haproxy import render
from tandem.errors import ConfigError

GOOD = [
    {"kind": "filesystem", "name": "fs", "device": "/r/volume-db/disk", "mountpoint": "/srv/db",
     "run_dir": "/run/tandem", "mkfs": True},
    {"kind": "mariadb", "name": "db", "datadir": "/srv/db/mysql", "require_mountpoint": "/srv/db",
     "run_dir": "/run/tandem", "password_file": "/etc/tandem/db.pw", "app_databases": ["cloud"]},
    {"kind": "vip", "name": "dbvip", "address": "10.0.1.100/24"},
    {"kind": "haproxy", "name": "api", "run_dir": "/run/tandem",
     "backends": [{"name": "node1", "address": "10.0.1.11", "port": 8081}]},
    {"kind": "exec", "name": "x", "start": "true", "stop": ["true"], "monitor": "true"},
    {"kind": "ocf", "name": "o", "agent": "IPaddr2", "params": {"ip": "10.0.1.5"}},
    {"kind": "systemd", "name": "s", "unit": "cron.service"},
]


def problems(items) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_resources(items)
    return e.value.problems


def test_good_config_builds_every_kind():
    kinds = [type(build(c)).kind for c in parse_resources(GOOD)]
    assert kinds == ["filesystem", "mariadb", "vip", "haproxy", "exec", "ocf", "systemd"]


def test_errors_name_the_key():
    bad = [
        {**GOOD[0], "mountpiont": "/x"},
        {**GOOD[1], "port": "many"},
        {"kind": "vip", "name": "v", "address": "10.0.1.300/24"},
        {"kind": "floppy", "name": "f"},
        {"name": "nokind"},
        {**GOOD[0], "name": "fs2", "run_dir": "run"},
        {**GOOD[1], "name": "db2", "datadir": "/elsewhere/mysql"},
        {k: v for k, v in GOOD[4].items() if k != "stop"},
    ]
    assert problems(bad) == [
        "config: resources.fs.mountpiont: unknown key (check the spelling; see the README for the keys)",
        "config: resources.db.port: not an integer",
        "config: resources.v.address: not an IPv4 address with prefix (like 10.0.0.5/24)",
        "config: resources.f.kind: unknown kind 'floppy' (one of: filesystem, mariadb, vip, haproxy, exec,"
        " ocf, systemd)",
        "config: resources.nokind.kind: required key is missing (one of: filesystem, mariadb, vip, haproxy,"
        " exec, ocf, systemd)",
        "config: resources.fs2.run_dir: must be an absolute path",
        "config: resources.db2.datadir: must be inside require_mountpoint",
        "config: resources.x.stop: required key is missing",
    ]


def test_bounds_are_explained():
    assert problems([{**GOOD[3], "port": 0, "backends": []}]) == [
        "config: resources.api.port: must be at least 1",
        "config: resources.api.backends: needs at least 1 item(s)"]


def test_duplicate_names():
    assert problems([GOOD[2], GOOD[2]]) == ["config: resources.dbvip.name: duplicate resource name"]


def test_haproxy_config_has_checks_and_redispatch():
    (api,) = parse_resources([GOOD[3]])
    text = render(api, "/run/tandem/api/stats.sock")
    for line in ("option httpchk GET /health", "option redispatch", "retries 3",
                 "server node1 10.0.1.11:8081 check"):
        assert line in text


def test_mkfs_features_are_checked_before_they_reach_mkfs():
    """A feature list goes onto mkfs.ext4's command line: one line naming the key,
    never an option smuggled in."""
    fs = parse_resources([GOOD[0]])[0]
    assert fs.mkfs_features == []  # ext4's defaults (tandem.config.EXT4_FEATURES says why)
    assert parse_resources([{**GOOD[0], "mkfs_features": ["^metadata_csum"]}])[0].mkfs_features == [
        "^metadata_csum"]
    out = problems([{**GOOD[0], "mkfs_features": ["fast_commit,-E discard"]}])
    assert len(out) == 1 and out[0].startswith("config: resources.fs.mkfs_features.0: "), out
    # mounted without fsck after a failover: a journal is not optional
    assert problems([{**GOOD[0], "mkfs_features": ["fast_commit", "^has_journal"]}]) == [
        "config: resources.fs.mkfs_features.1: ^has_journal: the filesystem is mounted without fsck"
        " after a crash or a failover, which only a journal makes safe (remove it)"]


def test_the_install_makes_the_redo_log_the_size_the_server_will_use():
    """The install's log must be the server's, or the first start makes a new one
    (preallocated again, unwritten.py): extra_options may name its own size."""
    db = build(parse_resources([GOOD[1]])[0])
    assert db._log_file_size() == "48M"
    assert f"--innodb-log-file-size={db._log_file_size()}" in db.argv()
    own = build(parse_resources([{**GOOD[1], "extra_options": ["--innodb_log_file_size=256M"]}])[0])
    assert own._log_file_size() == "256M" and own.argv()[-1] == "--innodb_log_file_size=256M"
