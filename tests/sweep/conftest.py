from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from fleetsim import cli
from fleetsim.sweep.cli import add_sweep_parser

# The suite imports test files in importlib mode: make this folder's helper module
# (sweep_fakes) importable by the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def sweep_main(monkeypatch):
    """``fleetsim.cli.main`` with the ``sweep`` sub-command registered (whether or not
    cli.py registers it itself yet)."""
    original = cli.build_parser

    def build_parser() -> argparse.ArgumentParser:
        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "sweep" not in sub.choices:
            add_sweep_parser(sub)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)
    return cli.main


@pytest.fixture
def base_scenario(tmp_path: Path) -> Path:
    from sweep_fakes import SYSTEMS_ONLY

    path = tmp_path / "base.yaml"
    path.write_text(SYSTEMS_ONLY)
    return path
