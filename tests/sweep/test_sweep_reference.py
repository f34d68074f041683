"""The README's sweep-file reference is the generated one, and its arms example plans."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fleetsim.sweep.config import SweepConfig, load_sweep
from fleetsim.sweep.index import RETRY_CHOICES, STATUS_MEANING, RunStatus
from fleetsim.sweep.plan import plan_sweep
from fleetsim.sweep.reference import render_readme, sweep_reference

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_readme_sweep_reference_in_sync():
    text = README.read_text()
    assert render_readme(text) == text, (
        "README sweep reference is stale: run `python -m fleetsim.sweep.reference README.md`"
    )


def test_reference_documents_every_key_status_and_retry_choice():
    ref = sweep_reference()
    for name, field in SweepConfig.model_fields.items():
        assert field.description, name
        assert f"| `{field.alias or name}` |" in ref
    assert set(STATUS_MEANING) == set(RunStatus)
    for status in RunStatus:
        assert f"| `{status.value}` |" in ref
    for choice in RETRY_CHOICES:
        assert f"| `{choice}`" in ref


def test_readme_arms_example_plans_each_arm(tmp_path):
    section = README.read_text().split("## Sweeps, checkpoints and resume", 1)[1]
    block = re.search(r"```yaml\n(base: .*?)```", section, re.S).group(1)
    data = yaml.safe_load(block)
    data["base"] = str(ROOT / "scenarios" / Path(data["base"]).name)
    path = tmp_path / "arms.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    runs = plan_sweep(load_sweep(path, out=str(tmp_path / "out")))
    assert [r.run_id for r in runs] == [
        f"arm={arm}__run.seed={seed}" for arm in ("fwdllm", "adapter_bp") for seed in (0, 1, 2)
    ]
    for run in runs:
        protocol = yaml.safe_load(run.resolved_yaml)["protocol"]
        assert protocol["devices_per_step"] == {"fwdllm": 1000, "adapter_bp": 10}[
            run.params["arm"]]
