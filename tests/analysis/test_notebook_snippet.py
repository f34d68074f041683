"""The README's notebook snippet, run exactly as printed, on a small real sweep of the
paper's closed-form fleet (systems-only, so each run takes seconds)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from fleetsim.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[2]
AG_NEWS = ROOT.parent / "shared" / "datasets" / "ag_news" / "test.csv"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### In a notebook"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.skipif(not AG_NEWS.exists(), reason="needs ../shared/datasets/ag_news/test.csv")
def test_readme_notebook_snippet_runs_on_a_sweep(tmp_path, monkeypatch) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # scenarios/sweeps/paper_policies.yaml, shrunk: 2 policies x 2 seeds, 10 phones.
    sweep = tmp_path / "paper_policies.yaml"
    sweep.write_text(f"""\
base: {ROOT / "scenarios" / "paper_closed_form.yaml"}
grid:
  policy.name: [uniform, capability]
seeds: [0, 1]
set:
  protocol.rounds: 2
  fleet.size: 10
  protocol.devices_per_step: 10
  output.events: false
  output.convergence_png: false
out: runs/sweeps/paper_policies
""")
    monkeypatch.chdir(tmp_path)
    result = run_sweep(sweep, backend="sequential", progress=False)
    assert result.ok

    snippet = readme_snippet()
    assert 'load_runs("runs/sweeps/paper_policies")' in snippet
    plt.close("all")
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    table = namespace["table"]

    # Independently: the 30th committed step of each run, from its steps.parquet.
    times: dict[str, list[float]] = {}
    for steps_file in sorted((tmp_path / "runs" / "sweeps" / "paper_policies").glob(
            "*/steps.parquet")):
        steps = pd.read_parquet(steps_file)
        policy = "capability" if "capability" in steps_file.parent.name else "uniform"
        times.setdefault(policy, []).append(
            float(steps[steps["committed"]].sort_values("step")["sim_time_s"].iloc[29]))
    assert table["policy.name"].tolist() == ["capability", "uniform"]
    assert table["target"].tolist() == [30, 30]
    assert table["runs"].tolist() == [2, 2] and table["reached"].tolist() == [2, 2]
    for policy, median_s in zip(table["policy.name"], table["median_s"]):
        assert len(set(times[policy])) == 1  # identical always-online phones: seeds agree
        assert median_s == times[policy][0]
        # FwdLLM's closed form: 0.4207 simulated minutes per round of 15 steps
        assert f"{median_s / 2 / 60:.4g}" == "0.4207"
    axes = plt.gca()
    assert [bar.get_height() for bar in axes.patches] == table["median_h"].tolist()
    assert [t.get_text() for t in axes.get_xticklabels()] == ["capability", "uniform"]
    assert axes.get_ylabel() == "simulated hours to 30 committed steps"
    plt.close("all")
