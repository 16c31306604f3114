"""What a failed schedule leaves for whoever looks into it afterwards.

A campaign tears its lab down at the end, and with it every host's logs and the
lab's event log; a replay of the schedule (`--only`) starts from a fresh cluster,
not from the state the earlier schedules left, and rarely fails the same way
(torture 279:164 left nothing but its one-line verdict). So, when a schedule
fails, the end of every log and of the event log is copied into the report.
"""

from __future__ import annotations

import os
from pathlib import Path

TAIL_BYTES = 4 << 20
"""Per file: the logs hold every schedule so far, the failed one is at their end."""


def log_files(lab_dir: Path) -> list[Path]:
    """The lab's event log and every host's logs (daemons, MariaDB, haproxy, the
    management server), not the database's own files."""
    files = [lab_dir / "events.jsonl"]
    for host in sorted((lab_dir / "hosts").glob("*")):
        files += sorted((host / "log").glob("*.log"))
        files += sorted(p for p in (host / "run").rglob("*.log") if p.is_file())
    return [f for f in files if f.is_file()]


def keep_tails(lab_dir: Path, dest: Path, tail_bytes: int = TAIL_BYTES) -> list[Path]:
    """Copy the last `tail_bytes` of each of `log_files(lab_dir)` to `dest`, under the
    same relative path; returns the copies. A file cut short starts at a line."""
    kept = []
    for src in log_files(lab_dir):
        out = dest / src.relative_to(lab_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - tail_bytes)
            f.seek(start)
            data = f.read(tail_bytes)
        if start:
            cut = data.find(b"\n")
            data = data[cut + 1:] if cut >= 0 else b""
        out.write_bytes(data)
        kept.append(out)
    return kept
