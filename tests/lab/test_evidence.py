"""The end of every log of a lab, kept when a schedule fails (tandem.lab.evidence)."""

from __future__ import annotations

from tandem.lab import evidence


def _tree(root):
    (root / "hosts" / "node1" / "log").mkdir(parents=True)
    (root / "hosts" / "node1" / "run" / "mariadb").mkdir(parents=True)
    (root / "hosts" / "node1" / "data" / "dbmnt").mkdir(parents=True)
    (root / "events.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(1000)))
    (root / "hosts" / "node1" / "log" / "agent.log").write_text("short\n")
    (root / "hosts" / "node1" / "run" / "mariadb" / "mariadbd.log").write_text("db\n")
    (root / "hosts" / "node1" / "data" / "dbmnt" / "ddl_recovery.log").write_text("not a log of ours\n")


def test_the_end_of_each_log_is_kept_from_a_line_on(tmp_path):
    lab, dest = tmp_path / "lab", tmp_path / "report" / "evidence" / "279-164"
    _tree(lab)
    kept = evidence.keep_tails(lab, dest, tail_bytes=100)
    names = sorted(str(p.relative_to(dest)) for p in kept)
    assert names == ["events.jsonl", "hosts/node1/log/agent.log",
                     "hosts/node1/run/mariadb/mariadbd.log"]
    tail = (dest / "events.jsonl").read_text()
    assert tail.endswith('{"n": 999}\n') and tail.startswith('{"n": ') and len(tail) <= 100
    assert (dest / "hosts/node1/log/agent.log").read_text() == "short\n"  # whole
    # kept again for a later schedule: the newer end
    with (lab / "events.jsonl").open("a") as f:
        f.write('{"n": 1000}\n')
    evidence.keep_tails(lab, dest, tail_bytes=100)
    assert (dest / "events.jsonl").read_text().endswith('{"n": 1000}\n')
