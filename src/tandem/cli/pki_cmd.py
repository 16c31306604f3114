"""`tandem pki ...`: the cluster's etcd certificate authority (see tandem.dcs.pki)."""

from __future__ import annotations

from pathlib import Path

import typer

from tandem.config import load_config
from tandem.errors import TandemError

app = typer.Typer(help="Certificates that etcd's clients and peers must show.", no_args_is_help=True)


@app.command("init")
def init(config: Path = typer.Option(..., "--config", "-c", help="the cluster's TOML file")) -> None:
    """Create [etcd] tls_dir: a CA and a certificate for every node and the witness.
    Copy the directory to every host; ca.key is only needed to issue more."""
    from tandem.dcs import pki
    cfg = load_config(config, check_secrets=False)
    if cfg.etcd.tls_dir is None:
        raise TandemError(f"{config}: etcd.tls_dir is not set; add it to [etcd] (e.g. tls_dir = \"pki\")")
    members = [*cfg.nodes.items(), *([(cfg.witness.name, cfg.witness)] if cfg.witness else [])]
    hosts = {name: [str(h.public_address), *([str(h.replication_address)] if h.replication_address else [])]
             for name, h in members}
    for files in pki.init(cfg.etcd.tls_dir, cfg.cluster.name, hosts):
        typer.echo(f"{files.cert}")
    typer.echo(f"CA: {cfg.etcd.tls_dir / 'ca.crt'} (keep {cfg.etcd.tls_dir / 'ca.key'} offline once every"
               " host has its files)")
