"""Lab names prefix namespaces, bridges, interfaces and directories: checked whole."""

from __future__ import annotations

import pytest

from tandem.errors import LabError
from tandem.lab.topology import check_lab_name


def test_lab_names_are_checked_whole():
    """`^...$` with re.match let "tq1\\n" through: `$` also matches before a final newline."""
    assert check_lab_name("tq1") == "tq1"
    for bad in ("tq1\n", "Tq1", "1tq", "toolongname", "", "tq-1"):
        with pytest.raises(LabError, match="use 1-8 lowercase letters"):
            check_lab_name(bad)
