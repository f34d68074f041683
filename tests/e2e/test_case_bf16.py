"""shared/cases/bf16_tiny_h_silent as a test of the right value: a finite difference below
what bfloat16 resolves is refused (exit 2, one line naming numerics.h and numerics.dtype and
the smallest allowed h), never run silently; at the smallest allowed h the estimate is close
to the exact derivative (checked for every dtype in tests/numerics/test_precision.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.cli import main

CASE = Path(__file__).resolve().parents[2].parent / "shared" / "cases" / "bf16_tiny_h_silent"


@pytest.mark.parametrize("override", [[], ["--set", "numerics.h=1.0e-6"],
                                      ["--set", "numerics.h=1.0e-5"]])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_tiny_h_in_bfloat16_is_refused(command, override, tmp_path, capsys):
    if not CASE.is_dir():
        pytest.skip("needs ../shared/cases/bf16_tiny_h_silent")
    args = [command, str(CASE / "scenario.yaml"), *override]
    if command == "run":
        args += ["--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "numerics.h" in err and "bfloat16" in err and ">= 0.002" in err
    assert not (tmp_path / "out").exists()  # nothing was simulated


def test_smallest_allowed_h_validates():
    if not CASE.is_dir():
        pytest.skip("needs ../shared/cases/bf16_tiny_h_silent")
    assert main(["validate", str(CASE / "scenario.yaml"), "--set", "numerics.h=2.0e-3"]) == 0
