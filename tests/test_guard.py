"""The conftest guard: a test that opens a file outside its own places fails (issue 31)."""

from __future__ import annotations

import os

import conftest


def test_a_file_in_the_home_folder_is_outside_and_a_temporary_one_inside(tmp_path):
    home = os.path.expanduser("~/.cache/hf-layerprune-guard-probe")
    try:
        open(home, "rb")
    except OSError:
        pass
    assert home in conftest.OUTSIDE
    conftest.OUTSIDE.remove(home)  # this test's own probe, not a violation
    (tmp_path / "x").write_text("x")
    assert not conftest.OUTSIDE
