"""The errno a FUSE reply carries for a failed request."""

from __future__ import annotations

import errno

from tandem.volume.fuse_raw import _errno_of


def test_a_real_errno_goes_out_as_it_is():
    assert _errno_of(OSError(errno.ENOSPC, "full")) == errno.ENOSPC
    assert _errno_of(OSError(errno.EROFS, "volume is Secondary")) == errno.EROFS


def test_enosys_goes_out_as_eio():
    """The kernel would take ENOSYS on FSYNC as "not implemented" and answer every
    later fsync itself, with success."""
    assert _errno_of(OSError(errno.ENOSYS, "pwritev2 blocked")) == errno.EIO


def test_what_the_kernel_refuses_or_no_errno_goes_out_as_eio():
    assert _errno_of(OSError(600, "beyond what the kernel takes")) == errno.EIO
    assert _errno_of(OSError(0, "no errno")) == errno.EIO
    assert _errno_of(ValueError("a bug")) == errno.EIO
