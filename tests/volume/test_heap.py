"""The daemon's malloc tuning: buffers of the resync's size and pattern, freed and
allocated again, no longer fault their pages in every time."""

from __future__ import annotations

import subprocess
import sys

PATTERN = """
import os, resource, sys
from tandem.volume.heap import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
src = os.urandom(1 << 20)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for warm_up in (True, False):  # the first round may grow the heap
    before = faults()
    for _ in range(20):  # one answered resync slice: 16 ranges read, then sealed
        read = [bytes(bytearray(src)) for _ in range(16)]
        sealed = [b"".join([b"head", b]) for b in read]
        del read, sealed
print((faults() - before) / (20 * 32))
"""


def _faults_per_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return float(out.stdout)


def test_freed_buffers_stay_in_the_heap_once_tuned():
    default, tuned = _faults_per_mib("default"), _faults_per_mib("tuned")
    assert default > 100, f"glibc's default should fault most pages in again: {default}/MiB"
    assert tuned < 10, f"tuned, the pages should be reused: {tuned} faults per MiB"
