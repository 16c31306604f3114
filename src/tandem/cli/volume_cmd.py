"""`tandem volume ...`: the drbdadm of tandem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from tandem.config import load_config
from tandem.errors import TandemError
from tandem.volume import control
from tandem.volume.spec import VolumeSpec, node_name, resolve

app = typer.Typer(help="The replicated volume (the DRBD role).", no_args_is_help=True)

ResourceArg = typer.Argument(..., help="the volume: NAME, as in the config's volumes.NAME table",
                             show_default=False)
JsonOpt = typer.Option(False, "--json", help="print JSON instead of text")
ConfigOpt = typer.Option(None, "--config", "-c", help="cluster config (default $TANDEM_CONFIG"
                         " or /etc/tandem/cluster.toml)")
NodeOpt = typer.Option(None, "--node", help="this node's name (default $TANDEM_NODE or hostname)")
DataOpt = typer.Option(None, "--data-dir", help="base for relative paths ($TANDEM_DATA_DIR)")
RunOpt = typer.Option(None, "--run-dir", help="sockets and mounts ($TANDEM_RUN_DIR)")


def _spec(resource: str, config: Path | None, node: str | None, data: Path | None,
          run: Path | None) -> VolumeSpec:
    path = config or Path(os.environ.get("TANDEM_CONFIG", "/etc/tandem/cluster.toml"))
    cfg = load_config(path)
    return resolve(cfg, resource, node_name(cfg, node), data, run)


def _call(spec: VolumeSpec, cmd: str, timeout: float = 60, **args: Any) -> Any:
    """One command to the daemon (control.call: every failure is one line)."""
    return control.call(spec.control_socket, cmd, timeout=timeout, **args)


@app.command("create")
def create(resource: str = ResourceArg, config: Path = ConfigOpt, node: str = NodeOpt,
           data_dir: Path = DataOpt,
           run_dir: Path = RunOpt,
           force: bool = typer.Option(False, help="overwrite existing metadata (loses its state)"),
           preallocate: bool = typer.Option(False, help="write the new part of the backing file"
                                            " with zeros (thick: no allocation under a write)")):
    """Create this node's backing file and metadata (disk Inconsistent until the first sync)."""
    from tandem.volume.backing import BackingStore
    from tandem.volume.meta import MetaStore
    spec = _spec(resource, config, node, data_dir, run_dir)
    BackingStore.create(spec.backing, spec.size, preallocate=preallocate)
    spec.metadata.parent.mkdir(parents=True, exist_ok=True)
    MetaStore.create(spec.metadata, spec.size, spec.node, overwrite=force).close()
    typer.echo(f"{resource}: created on {spec.node} ({spec.size} bytes, backing {spec.backing},"
               f" metadata {spec.metadata})")


@app.command("up")
def up(resource: str = ResourceArg, config: Path = ConfigOpt, node: str = NodeOpt,
       data_dir: Path = DataOpt,
       run_dir: Path = RunOpt, log_level: str = typer.Option("info")):
    """Run the volume daemon in the foreground (Secondary until promoted)."""
    from tandem.logs import setup_logging
    from tandem.volume import daemon
    path = config or Path(os.environ.get("TANDEM_CONFIG", "/etc/tandem/cluster.toml"))
    cfg = load_config(path)
    spec = resolve(cfg, resource, node_name(cfg, node), data_dir, run_dir)
    if not spec.metadata.exists():
        raise TandemError(f"{spec.metadata}: no metadata; run `tandem volume create {resource}`")
    setup_logging(log_level)
    daemon.run(spec, cfg.cluster.secret.read(), _fence_hook(cfg, spec))


def _fence_hook(cfg, spec):
    """The volume's fence-peer callback, from its config (None: no fencing)."""
    if cfg.volumes[spec.resource].fence_peer == "dcs":
        from tandem.cluster.fence_peer import DcsFencer
        return DcsFencer.for_volume(cfg, spec)
    if spec.fence_peer_command:
        from tandem.volume.replicator import run_fence_command
        return run_fence_command(spec.fence_peer_command, spec)
    return None


def _simple(cmd: str, help_text: str, **fixed: Any):
    def command(resource: str = ResourceArg, config: Path = ConfigOpt, node: str = NodeOpt,
                data_dir: Path = DataOpt, run_dir: Path = RunOpt,
                json_out: bool = JsonOpt):
        spec = _spec(resource, config, node, data_dir, run_dir)
        result = _call(spec, cmd, **fixed)
        if json_out:
            typer.echo(json.dumps(result, indent=2))
        elif isinstance(result, dict) and "role" in result:
            typer.echo(render_status(result))
        elif result is not None:
            typer.echo(result)
    command.__doc__ = help_text
    return command


app.command("down")(_simple("down", "Stop the daemon (demotes first if Primary)."))
app.command("secondary")(_simple("secondary", "Demote to Secondary (the FUSE file goes away)."))
app.command("invalidate")(_simple("invalidate", "Discard local data: full sync from the peer."))
app.command("attach")(_simple(
    "attach", "Take a Failed disk back (after a restart) in the state it failed in."))
app.command("discard-my-data")(_simple(
    "discard-my-data", "Resolve a split brain by throwing away this node's changes."))
app.command("connect")(_simple("connect", "(Re)connect to the peer."))
app.command("disconnect")(_simple("disconnect", "Drop the link and stay StandAlone."))


@app.command("outdate")
def outdate(resource: str = ResourceArg, config: Path = ConfigOpt, node: str = NodeOpt,
            data_dir: Path = DataOpt,
            run_dir: Path = RunOpt,
            unless_connected: bool = typer.Option(
                False, "--unless-connected",
                help="do nothing while the link to the peer is up (what the agent does when the"
                     " DCS records this disk Outdated)"),
            json_out: bool = JsonOpt):
    """Mark this (Secondary) disk Outdated: not promotable without --force.

    A connect to an UpToDate peer with the same data makes it UpToDate again; at a connect
    to an UpToDate peer, what this disk wrote since the peer's generation is discarded
    (an Outdated disk is never the source of an UpToDate one)."""
    spec = _spec(resource, config, node, data_dir, run_dir)
    st = _call(spec, "outdate", unless_connected=unless_connected)
    typer.echo(json.dumps(st, indent=2) if json_out else render_status(st))


@app.command("primary")
def primary(resource: str = ResourceArg, config: Path = ConfigOpt, node: str = NodeOpt,
            data_dir: Path = DataOpt,
            run_dir: Path = RunOpt,
            force: bool = typer.Option(False, "--force", help="promote a disk that is not UpToDate")):
    """Promote to Primary: the volume appears as <run-dir>/volume-RES/disk."""
    spec = _spec(resource, config, node, data_dir, run_dir)
    st = _call(spec, "primary", force=force)
    typer.echo(render_status(st))


@app.command("status")
def status(resource: str = ResourceArg, config: Path = ConfigOpt, node: str = NodeOpt,
           data_dir: Path = DataOpt,
           run_dir: Path = RunOpt, json_out: bool = JsonOpt):
    """Role, disk and peer states, resync progress (rate and ETA)."""
    spec = _spec(resource, config, node, data_dir, run_dir)
    st = _call(spec, "status")
    typer.echo(json.dumps(st, indent=2) if json_out else render_status(st))


@app.command("verify")
def verify(resource: str = ResourceArg, config: Path = ConfigOpt, node: str = NodeOpt,
           data_dir: Path = DataOpt,
           run_dir: Path = RunOpt, json_out: bool = JsonOpt):
    """Compare block checksums with the peer (run on the Primary).

    Differences are marked out of sync and resynced at the next connect."""
    spec = _spec(resource, config, node, data_dir, run_dir)
    res = _call(spec, "verify", timeout=3600)
    if json_out:
        typer.echo(json.dumps(res, indent=2))
    else:
        typer.echo(f"{resource}: verified {res['done_bytes']} bytes in {res['elapsed_s']}s"
                   f" ({res['rate_mib_s']} MiB/s): {res['out_of_sync_blocks']} blocks out of sync")
    if res["out_of_sync_blocks"]:
        raise typer.Exit(1)


def render_status(st: dict) -> str:
    """drbdadm-like, but with rate and ETA; details only when they matter."""
    lines = [f"{st['resource']} role:{st['role']}" + (" suspended:yes" if st.get("suspended") else "")]
    disk = f"  disk:{st['disk']}"
    if st.get("out_of_sync_bytes"):
        disk += f" out-of-sync:{st['out_of_sync_bytes'] // 1024}KiB"
    lines.append(disk)
    p = st["peer"]
    lines.append(f"  {p['node']} connection:{p['connection']} role:{p['role']} peer-disk:{p['disk']}"
                 + (f" after-split-brain:{st['after_split_brain']}" if "after_split_brain" in st else ""))
    rs = st.get("resync")
    if rs and not rs["finished"]:
        lines.append(f"    {rs['kind']}: {rs['percent']:.1f}% {rs['rate_mib_s']} MiB/s"
                     f" eta {rs['eta_s']}s")
    if p.get("standalone_reason"):
        lines.append(f"    standalone: {p['standalone_reason']}")
    if st.get("suspended_reason"):
        lines.append(f"  suspended: {st['suspended_reason']}")
    if st.get("forced_secondary"):
        lines.append(f"  forced to Secondary: {st['forced_secondary']}")
    if st.get("disk_error"):
        lines.append(f"  disk error: {st['disk_error']}")
    if st.get("device"):
        lines.append(f"  device: {st['device']}")
    return "\n".join(lines)
