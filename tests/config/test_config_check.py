"""`tandem config check` accepts a good file and names every bad key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tandem.config import load_config, parse_size
from tandem.errors import ConfigError
from tests.conftest import run_tandem


def edit(cfgdir: Path, old: str, new: str) -> Path:
    path = cfgdir / "cluster.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


def check(path: Path) -> tuple[int, list[str]]:
    proc = run_tandem("config", "check", str(path))
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def test_example_is_ok(cfgdir):
    code, lines = check(cfgdir / "cluster.toml")
    assert (code, lines) == (0, ["ok"])
    cfg = load_config(cfgdir / "cluster.toml")
    assert cfg.volumes["db"].size == 1024**3
    assert cfg.cluster.secret.file == (cfgdir / "secret").resolve()


@pytest.mark.parametrize("old,new,expected", [
    ('replication_address = "10.100.2.12"', 'replication_address = "10.100.2.300"',
     "nodes.node2.replication_address: not an IPv4 address"),
    ('port = 7789', 'port = "seven"', "volumes.db.port: not an integer"),
    ('port = 7789', 'port = 70000', "volumes.db.port: Input should be less than or equal to 65535"),
    ('embedded = true\ntls_dir = "pki"',
     'embedded = false\ntls_dir = "pki"\nendpoints = ["https://10.100.1.50:2379"]',
     "etcd.endpoints.0: 'https://10.100.1.50:2379' is not HOST:PORT"),  # it was dialled as a host name
    ('embedded = true\ntls_dir = "pki"',
     'embedded = false\ntls_dir = "pki"\nendpoints = ["10.100.1.50:99999"]',
     "etcd.endpoints.0: '10.100.1.50:99999' is not HOST:PORT"),
    # a switch where a number belongs (pydantic took it for port 1)
    ('port = 7789', 'port = true', "volumes.db.port: true/false is not a value for this key"),
    ('force_secondary_after = 10', 'force_secondary_after = false',
     "volumes.db.force_secondary_after: true/false is not a value for this key"),
    ('ping_timeout = 0.5', 'ping_timout = 0.5', "volumes.db.ping_timout: unknown key"),
    ('force_secondary_after = 10', 'force_secondary_after = 0.5',
     "volumes.db.force_secondary_after: must be 0 (never) or at least 2 seconds"),
    ('force_secondary_after = 10', 'force_secondary_after = -1',
     "volumes.db.force_secondary_after: Input should be greater than or equal to 0"),
    ('cache = "write-through"', 'cache = "writethrough"', "volumes.db.cache: Input should be"),
    ('after_split_brain = "discard-least-recent-primary"', 'after_split_brain = "discard-younger-primary"',
     "volumes.db.after_split_brain: Input should be 'disconnect', 'discard-zero-changes',"),
    ('[etcd]', '[etcdd]', "etcdd: unknown key"),
    ('public_address = "10.100.1.12"', 'public_address = "10.100.1.11"',
     "nodes.node2.public_address: duplicate address 10.100.1.11 (also nodes.node1.public_address)"),
    ('size = "1GiB"', 'size = "1 parsec"', "volumes.db.size: not a size: '1 parsec'"),
    ('[nodes.node2]', '[nodes.Node_2]', "nodes.Node_2.[key]: not a valid name"),
    ('name = "cloud"', '', "cluster.name: required key is missing"),
    ('address = "10.100.1.100/24"', 'address = "10.100.1.12/24"',
     "database.vip.address: 10.100.1.12 is already nodes.node2.public_address"),
    ('embedded = true', 'embedded = false', "etcd.endpoints: required when etcd.embedded = false"),
    ('tls_dir = "pki"', '', "etcd.tls_dir: required with embedded etcd"),  # an etcd open to anyone
    ('embedded = true\ntls_dir = "pki"', 'embedded = false\nendpoints = ["10.100.1.50:2379"]',
     "etcd.tls_dir: required: an etcd without TLS lets anyone"),  # an external one: the same
    ('embedded = true', 'embedded = true\ninsecure = true', "etcd.insecure: only for an external etcd"),
    ('databases = ["cloud", "cloud_usage"]', 'databases = ["cloud", "mysql"]',
     "database.databases.1: 'mysql' is one of MariaDB's own schemas"),
    ('databases = ["cloud", "cloud_usage"]', 'databases = ["cloud; DROP"]',
     "database.databases.0: not a valid database name"),
    ('tls_dir = "pki"', 'tls_dir = "nopki"', "etcd.tls_dir: no CA certificate"),
    ('fence_peer = "dcs"', 'fence_peer = "etcd"', "volumes.db.fence_peer: Input should be 'dcs'"),
    ('databases = ["cloud", "cloud_usage"]', 'databases = ["cloud"]\ntls = "yes please"',
     "database.tls: not true or false"),
    ('fence_peer = "dcs"', 'fence_peer = "dcs"\nfence_peer_command = "/bin/true"',
     "volumes.db: fence_peer and fence_peer_command are both set; keep one"),
    ('mkfs_features = []', 'mkfs_features = ["^has_journal"]',
     "database.mkfs_features.0: ^has_journal: the filesystem is mounted without fsck"),
    ('mkfs_features = []', 'mkfs_features = ["fast_commit -E x"]',
     "database.mkfs_features.0: "),
    ('fence_peer = "dcs"', '',  # the database's volume without a fence-peer hook: unsafe
     'volumes.db.fence_peer: required for the database\'s volume: set fence_peer = "dcs"'),
])
def test_bad_values_are_named(cfgdir, old, new, expected):
    code, lines = check(edit(cfgdir, old, new))
    assert code == 2
    assert any(expected in line for line in lines), lines
    assert all(line.startswith("tandem: ") for line in lines)
    assert not any("Traceback" in line for line in lines)


def test_database_tls_is_on_with_the_cluster_pki_and_needs_it(cfgdir):
    """MariaDB's TLS uses the cluster's PKI: on by default when there is one, off
    without (an external etcd without TLS), and asked for without one: one line."""
    from tandem.config import db_tls, db_tls_ca
    from tandem.dcs import pki
    cfg = load_config(cfgdir / "cluster.toml")
    assert cfg.database.tls is None and db_tls_ca(cfg) is None  # no database CA yet: plain TCP
    on = load_config(edit(cfgdir, "port = 3306\n", "port = 3306\ntls = true\n"), check_secrets=False)
    assert db_tls_ca(on) == cfg.etcd.tls_dir / "db-ca.crt"
    code, lines = check(cfgdir / "cluster.toml")  # asked for, and not there: one line
    assert code == 2 and any("database.tls: no database CA" in ln and "tandem pki db" in ln
                             for ln in lines), lines
    pki.init_db(cfg.etcd.tls_dir, "cloud", {"node2": ["10.100.1.12"]})
    assert check(cfgdir / "cluster.toml") == (0, ["ok"])
    edit(cfgdir, "tls = true\n", "")
    cfg = load_config(cfgdir / "cluster.toml")
    assert db_tls_ca(cfg) == cfg.etcd.tls_dir / "db-ca.crt"  # there: on by default
    assert db_tls(cfg, "node2").key == cfg.etcd.tls_dir / "node2-db.key"
    off = load_config(edit(cfgdir, "port = 3306\n", "port = 3306\ntls = false\n"))
    assert db_tls(off, "node2") is None and db_tls_ca(off) is None
    edit(cfgdir, "tls = false\n", "tls = true\n")
    path = edit(cfgdir, 'embedded = true\ntls_dir = "pki"',
                'embedded = false\nendpoints = ["10.100.1.50:2379"]\ninsecure = true')
    code, lines = check(path)
    assert code == 2 and any("database.tls: needs the cluster's PKI" in ln for ln in lines), lines
    edit(cfgdir, "tls = true\n", "")
    assert db_tls_ca(load_config(path)) is None  # no PKI: plain TCP


def test_every_problem_is_reported_at_once(cfgdir):
    edit(cfgdir, 'replication_address = "10.100.2.12"', 'replication_address = 12')
    code, lines = check(edit(cfgdir, 'ping_timeout = 0.5', 'pingtimeout = 0.5'))
    assert code == 2
    assert len(lines) == 2, lines


def test_missing_secret_file(cfgdir):
    (cfgdir / "secret").unlink()
    code, lines = check(cfgdir / "cluster.toml")
    assert code == 2
    assert len(lines) == 1
    assert "cluster.secret.file: no such file" in lines[0]


def test_secret_readable_by_others_is_refused(cfgdir):
    os.chmod(cfgdir / "secret", 0o644)
    code, lines = check(cfgdir / "cluster.toml")
    assert code == 2 and "readable by others" in lines[0]


def test_short_secret_is_refused_by_the_check_not_only_by_the_daemon(cfgdir):
    (cfgdir / "secret").write_text("q7Zx9\n")
    code, lines = check(cfgdir / "cluster.toml")
    assert code == 2 and len(lines) == 1 and "holds fewer than 16 bytes" in lines[0], lines
    assert "q7Zx9" not in lines[0]


def test_password_files_are_relative_to_the_config_and_private(cfgdir, tmp_path_factory):
    """As the secret and etcd.tls_dir: a relative database.password_file was read
    from the working directory, so `config check` judged another file than the
    agent's."""
    pw = cfgdir / "dbpass"
    pw.write_text("a-password\n")
    os.chmod(pw, 0o600)
    path = edit(cfgdir, "[database]\n", '[database]\npassword_file = "dbpass"\n')
    elsewhere = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(elsewhere)
    try:
        assert load_config(path).database.password_file == pw.resolve()
        os.chmod(pw, 0o644)
        code, lines = check(path)
    finally:
        os.chdir(old)
    assert code == 2 and lines == [f"tandem: {path}: database.password_file: {pw.resolve()} is"
                                   " readable by others (chmod 600 it)"], lines
    assert "a-password" not in "".join(lines)


def test_secret_never_printed(cfgdir):
    cfg = load_config(cfgdir / "cluster.toml")
    dumped = repr(cfg) + cfg.model_dump_json()
    assert "0123456789abcdef" not in dumped
    assert cfg.cluster.secret.read() == b"0123456789abcdef0123456789abcdef"


def test_not_toml_and_missing_file(cfgdir):
    path = cfgdir / "cluster.toml"
    path.write_text("[cluster\nname=")
    code, lines = check(path)
    assert code == 2 and len(lines) == 1 and "not valid TOML" in lines[0]
    code, lines = check(cfgdir / "nope.toml")
    assert code == 2 and "cannot read" in lines[0]


def test_parse_size():
    assert parse_size("4KiB") == 4096
    assert parse_size(512) == 512
    assert parse_size("2G") == 2 * 1024**3
    for bad in ("-1", "1.5G", "", True, 0):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_config_error_type():
    from tandem.config import parse_config
    with pytest.raises(ConfigError) as err:
        parse_config({"cluster": {"name": "x"}, "nodes": {}})
    assert any("cluster.secret: required key is missing" in p for p in err.value.problems)


def test_pki_init_makes_a_ca_and_a_certificate_per_host_and_never_overwrites(tmp_path):
    import shutil

    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    shutil.copy(Path(__file__).parents[2] / "examples" / "cluster.toml", tmp_path / "cluster.toml")
    proc = run_tandem("pki", "init", "--config", str(tmp_path / "cluster.toml"))
    assert proc.returncode == 0, proc.stderr
    pki_dir = tmp_path / "pki"
    for host in ("node1", "node2", "witness"):
        assert (pki_dir / f"{host}.key").stat().st_mode & 0o077 == 0  # private keys: 600
        cert = x509.load_pem_x509_certificate((pki_dir / f"{host}.crt").read_bytes())
        ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        ips = {str(ip) for ip in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)}
        assert "127.0.0.1" in ips and len(ips) == 3, ips  # public, replication, loopback
    lines = proc.stdout.strip().splitlines()  # each host: the CA's certificate and its own pair
    db = " db-ca.crt {h}-db.crt {h}-db.key"  # the data nodes: the database's too
    assert lines[1:4] == [f"  {h}: ca.crt {h}.crt {h}.key" + (db.format(h=h) if h != "witness" else "")
                          for h in ("node1", "node2", "witness")], lines
    assert len(lines) == 5 and lines[4].startswith(f"{pki_dir / 'ca.key'} and"), lines
    assert "stay on this machine" in lines[4]
    db_ca = x509.load_pem_x509_certificate((pki_dir / "db-ca.crt").read_bytes())
    for host in ("node1", "node2"):
        assert (pki_dir / f"{host}-db.key").stat().st_mode & 0o077 == 0
        cert = x509.load_pem_x509_certificate((pki_dir / f"{host}-db.crt").read_bytes())
        cert.verify_directly_issued_by(db_ca)  # not etcd's: etcd never takes it
        with pytest.raises((ValueError, TypeError, InvalidSignature)):
            cert.verify_directly_issued_by(ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]  # a server's only
    assert not (pki_dir / "witness-db.key").exists()
    # strict X.509 (Python 3.13's default): key identifiers on every certificate
    import subprocess
    for crt, issuer in (("node1.crt", "ca.crt"), ("node1-db.crt", "db-ca.crt")):
        out = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(pki_dir / issuer),
                              str(pki_dir / crt)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    help_text = run_tandem("pki", "init", "--help").stdout
    assert "ca.key stays on" in " ".join(help_text.split()) and "Copy the directory" not in help_text
    before = (pki_dir / "ca.key").read_bytes()
    again = run_tandem("pki", "init", "--config", str(tmp_path / "cluster.toml"))
    lines = again.stderr.strip().splitlines()
    assert again.returncode != 0 and len(lines) == 1 and "a CA exists already" in lines[0], lines
    assert (pki_dir / "ca.key").read_bytes() == before


def test_pki_db_adds_the_database_ca_to_a_pki_made_before_it(tmp_path):
    """A cluster whose PKI predates MariaDB's TLS: plain TCP until `tandem pki db` made
    the database CA (tls unset: on once it is there); made once, never overwritten."""
    import shutil

    from tandem.config import db_tls, db_tls_ca
    from tandem.dcs import pki
    shutil.copy(Path(__file__).parents[2] / "examples" / "cluster.toml", tmp_path / "cluster.toml")
    pki.init(tmp_path / "pki", "cloud", {"node1": ["10.100.1.11"]})  # etcd's only
    cfg = load_config(tmp_path / "cluster.toml", check_secrets=False)
    assert db_tls_ca(cfg) is None and db_tls(cfg, "node1") is None
    proc = run_tandem("pki", "db", "--config", str(tmp_path / "cluster.toml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == [f"  {h}: db-ca.crt {h}-db.crt {h}-db.key"
                                            for h in ("node1", "node2")]
    assert db_tls_ca(cfg) == tmp_path / "pki" / "db-ca.crt"
    assert db_tls(cfg, "node2").key == tmp_path / "pki" / "node2-db.key"
    before = (tmp_path / "pki" / "db-ca.key").read_bytes()
    again = run_tandem("pki", "db", "--config", str(tmp_path / "cluster.toml"))
    assert again.returncode != 0 and "a CA exists already (db-ca.crt/db-ca.key)" in again.stderr
    assert (tmp_path / "pki" / "db-ca.key").read_bytes() == before


def test_the_database_volumes_mkfs_features_reach_its_filesystem(cfgdir, tmp_path):
    """[database] mkfs_features is what the DB group's filesystem makes at the mkfs of a
    blank volume: ext4's defaults unless the config names some."""
    from tandem.cluster.dbgroup import build_db_group
    from tandem.volume.spec import resolve

    pw = tmp_path / "db.password"
    pw.write_text("a-password-long-enough\n")
    pw.chmod(0o600)

    def features(path: Path) -> list[str]:
        cfg = load_config(path, check_secrets=False)
        cfg = cfg.model_copy(update={"database": cfg.database.model_copy(update={"password_file": pw})})
        spec = resolve(cfg, "db", "node1", tmp_path / "data", tmp_path / "run")
        group = build_db_group(cfg, spec, tmp_path / "data", tmp_path / "run")
        fs = next(m for m in group.members if m.kind == "filesystem")
        return fs.config.mkfs_features

    assert features(cfgdir / "cluster.toml") == []
    assert features(edit(cfgdir, "mkfs_features = []", 'mkfs_features = ["fast_commit"]')) == [
        "fast_commit"]
