"""Running the system tools the lab is made of (ip, nft, tc, nsenter).

One place turns a failed command into a LabError that says which command failed
and what it printed, so callers never parse return codes themselves.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from tandem.errors import LabError


def run(cmd: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]}: command not found (run scripts/setup)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{shlex.join(cmd)}: timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"{shlex.join(cmd)}: {detail[-1] if detail else 'exit ' + str(proc.returncode)}")
    return proc


def ns_prefix(netns: str) -> list[str]:
    """Enter only the network namespace: mounts stay shared with the whole machine,
    so a FUSE or ext4 mount made by one process of a host is seen by the others
    (`ip netns exec` would give every command a private mount namespace)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--"]


def in_ns(netns: str, cmd: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
    return run([*ns_prefix(netns), *cmd], **kw)
