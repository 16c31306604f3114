"""`tandem pki ...`: the cluster's certificate authorities, etcd's and the database's (see
tandem.dcs.pki)."""

from __future__ import annotations

from pathlib import Path

import typer

from tandem.config import load_config
from tandem.errors import TandemError

app = typer.Typer(help="Certificates that etcd's clients and peers must show.", no_args_is_help=True)


@app.command("init")
def init(config: Path = typer.Option(..., "--config", "-c", help="the cluster's TOML file")) -> None:
    """Create etcd.tls_dir: a CA and a certificate for every node and the witness.

    Each host gets ca.crt and its own HOST.crt and HOST.key only; ca.key stays on
    this machine (whoever has it can make certificates etcd accepts)."""
    from tandem.dcs import pki
    cfg, tls_dir = _config(config)
    members = [*cfg.nodes.items(), *([(cfg.witness.name, cfg.witness)] if cfg.witness else [])]
    hosts = {name: _addresses(h) for name, h in members}
    issued = pki.init(tls_dir, cfg.cluster.name, hosts)
    db = pki.init_db(tls_dir, cfg.cluster.name, {name: hosts[name] for name in cfg.nodes})
    typer.echo(f"created {tls_dir}; copy to each host's tls_dir only its own files (keys mode 600):")
    dbs = {f.cert.name.removesuffix("-db.crt"): f for f in db}
    for host, files in zip(hosts, issued, strict=True):
        extra = f" {dbs[host].ca.name} {dbs[host].cert.name} {dbs[host].key.name}" if host in dbs else ""
        typer.echo(f"  {host}: {files.ca.name} {files.cert.name} {files.key.name}{extra}")
    typer.echo(f"{tls_dir / 'ca.key'} and {tls_dir / 'db-ca.key'} stay on this machine, offline if you"
               " can: never copy them to a host (with them anyone can make certificates etcd or the"
               " database's clients accept)")


@app.command("db")
def init_db(config: Path = typer.Option(..., "--config", "-c", help="the cluster's TOML file")) -> None:
    """Add the database's CA and a server certificate per data node to etcd.tls_dir.

    For a PKI made before tandem had MariaDB's TLS. The database takes TCP clients over
    TLS only once these are on the data nodes and their agents restarted MariaDB."""
    from tandem.dcs import pki
    cfg, tls_dir = _config(config)
    nodes = {name: _addresses(n) for name, n in cfg.nodes.items()}
    for files in pki.init_db(tls_dir, cfg.cluster.name, nodes):
        host = files.cert.name.removesuffix("-db.crt")
        typer.echo(f"  {host}: {files.ca.name} {files.cert.name} {files.key.name}")
    typer.echo(f"{tls_dir / 'db-ca.key'} stays on this machine; copy db-ca.crt to every node first"
               " (its management server checks the database with it), then each node's pair")


def _config(config: Path):
    """The cluster config and its etcd.tls_dir, where both CAs live."""
    cfg = load_config(config, check_secrets=False)
    if cfg.etcd.tls_dir is None:
        raise TandemError(f"{config}: etcd.tls_dir is not set; add it to [etcd] (e.g. tls_dir = \"pki\")")
    return cfg, cfg.etcd.tls_dir


def _addresses(host) -> list[str]:
    return [str(host.public_address), *([str(host.replication_address)] if host.replication_address else [])]
