"""`tandem bench volume` refuses bad options in one line before it brings anything up
(a typo must not cost a lab's set-up, nor leave half of one behind)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "tandem.cli.main", "bench", "volume", "--lab", "tbadopt"]


@pytest.mark.parametrize(("args", "says"), [
    (["--cache", "write-around"], "--cache: 'write-around' is not write-through or write-back"),
    (["--threads", "1,x"], "--threads: not a list of integers"),
    (["--only", "sysbench,nope"], "nope"),
    (["--mkfs-features", "fast_commit;reboot"], "--mkfs-features: 'fast_commit;reboot' is not"),
    (["--mkfs-features", "fast_commit,"], "--mkfs-features"),
])
def test_bad_options_get_one_line_and_no_lab(args, says):
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "tbadopt" not in netns


@pytest.mark.lab
def test_mount_options_the_kernel_refuses_get_one_line_and_leave_nothing_mounted(tmp_path):
    """The refusal comes from the kernel (journal_async_commit needs data=writeback), so it
    can only be seen on a real mount: a loop device over a small ext4 image."""
    from tandem.bench.mariadb import BenchError
    from tandem.bench.volume import _ext4
    from tandem.volume.fuse_stack import loop_device

    image = tmp_path / "img"
    image.write_bytes(b"")
    os.truncate(image, 32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(str(image), direct_io=False) as dev:
        with pytest.raises(BenchError) as e, _ext4(dev, str(mnt), "journal_async_commit"):
            pass
        assert "--ext4-options 'journal_async_commit': mount refused them" in str(e.value)
        assert "\n" not in str(e.value)
        assert not os.path.ismount(mnt)
        with _ext4(dev, str(mnt), "data=writeback,journal_async_commit") as m:
            assert os.path.ismount(m)
        assert not os.path.ismount(mnt)
