"""Acknowledged writes looked up in the database while the campaign runs.

The campaign's verdict on lost writes reads the whole table back at the end. That
is the proof, but it names no schedule: torture 90:37 lost 675 writes and the
per-schedule lines said nothing, so the loss had to be dated from the writer's
log afterwards. This check reads the writer's log from where it stopped last time
and asks the database, by primary key, for each new acknowledged id: a missing
one is reported with the schedule that just ended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
BATCH = 1500  # ids of ~30 characters: one argument well under 128 KiB


class AckedWritesCheck:
    """`query(sql)` runs one SELECT through the DB VIP and returns its rows."""

    def __init__(self, log: Path, query: Callable[[str], list[tuple]]):
        self.log = log
        self.query = query
        self._offset = 0
        self._pending: list[dict] = []
        self.checked = 0
        self.missing: list[dict] = []

    def _read_new(self) -> None:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # a line being written stays for next time
        self._offset += end
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "acked" in rec and _ID.fullmatch(str(rec.get("id", ""))):
                self._pending.append(rec)

    def run(self) -> list[dict]:
        """The acknowledged writes since the last run that the table lacks. Raises
        what `query` raises (the database unreachable): the ids stay pending."""
        self._read_new()
        lost: list[dict] = []
        while self._pending:
            batch = self._pending[:BATCH]
            ids = ",".join(f"'{r['id']}'" for r in batch)  # ids checked against _ID above
            found = {str(row[0]) for row in self.query(f"SELECT id FROM acked WHERE id IN ({ids})")}
            gone = [r for r in batch if r["id"] not in found]
            lost += gone
            self.missing += gone  # kept even if a later batch's query fails
            del self._pending[:len(batch)]
            self.checked += len(batch)
        return lost


def describe(lost: list[dict]) -> str:
    t = sorted(r["acked"] for r in lost)
    return (f"{len(lost)} acknowledged write(s) not in the table (acked {t[0]:.2f}-{t[-1]:.2f},"
            f" first {lost[0]['id']})")
