"""`tandem pki ...`: the cluster's etcd certificate authority (see tandem.dcs.pki)."""

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
    cfg = load_config(config, check_secrets=False)
    tls_dir = cfg.etcd.tls_dir
    if tls_dir is None:
        raise TandemError(f"{config}: etcd.tls_dir is not set; add it to [etcd] (e.g. tls_dir = \"pki\")")
    members = [*cfg.nodes.items(), *([(cfg.witness.name, cfg.witness)] if cfg.witness else [])]
    hosts = {name: [str(h.public_address), *([str(h.replication_address)] if h.replication_address else [])]
             for name, h in members}
    issued = pki.init(tls_dir, cfg.cluster.name, hosts)
    typer.echo(f"created {tls_dir}; copy to each host's tls_dir only its own files (keys mode 600):")
    for host, files in zip(hosts, issued, strict=True):
        typer.echo(f"  {host}: {files.ca.name} {files.cert.name} {files.key.name}")
    typer.echo(f"{tls_dir / 'ca.key'} stays on this machine, offline if you can: never copy it to a host"
               " (with it anyone can make certificates etcd accepts)")
