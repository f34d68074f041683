"""The README's "Your first scenario" block is a complete scenario that validates and runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml

from fleetsim.cli import main
from fleetsim.scenario.schema import Scenario

README = Path(__file__).resolve().parents[2] / "README.md"


def first_scenario_text() -> str:
    pattern = r"<!-- first-scenario:begin -->\n```yaml\n(.*?)```\n<!-- first-scenario:end -->"
    match = re.search(pattern, README.read_text(), re.S)
    assert match, "README lacks the first-scenario block"
    return match.group(1)


def test_first_scenario_sets_every_section_and_is_short() -> None:
    text = first_scenario_text()
    data = yaml.safe_load(text)
    assert set(Scenario.model_fields) <= set(data), set(Scenario.model_fields) - set(data)
    assert len(text.splitlines()) <= 30


def test_first_scenario_validates_and_runs(tmp_path, capsys) -> None:
    path = tmp_path / "first.yaml"
    path.write_text(first_scenario_text())
    assert main(["validate", str(path)]) == 0
    assert "first.yaml: ok (40 devices, protocol fwdllm" in capsys.readouterr().out
    out = tmp_path / "run"
    code = main(["run", str(path), "--no-progress", "--out", str(out),
                 "--set", "protocol.max_steps=2", "--set", "output.convergence_png=false"])
    assert code == 0
    steps = pd.read_parquet(out / "steps.parquet")
    assert steps["committed"].sum() == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == "FwdLLM"
