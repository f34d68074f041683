"""``fleetsim compare``: a narrow table (one row per group and target) on stdout, or with
``--json`` the numbers of comparison.csv.  Values by hand from the synthetic runs of
conftest.py (see test_report.py::test_compare_runs_table_markdown_and_curves)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from fleetsim.analysis.narrow import narrow_comparison
from fleetsim.cli import main


def _runs(make_run):
    return [
        make_run(name="v2-s0", seed=0, units_per_device=2, accuracies=(0.3, 0.5, 0.7)),
        make_run(name="v2-s1", seed=1, units_per_device=2, accuracies=(0.3, 0.5, 0.55)),
        make_run(name="v5-s0", seed=0, units_per_device=5, accuracies=(0.6, 0.7, 0.8)),
    ]


def test_compare_prints_targets_as_rows(make_run, tmp_path, capsys) -> None:
    dirs = _runs(make_run)
    out = tmp_path / "cmp"
    code = main(["compare", *map(str, dirs), "--by", "protocol.perturbations_per_device",
                 "--targets", "0.5,0.7", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split("  ")
    assert [c.strip() for c in header if c.strip()] == [
        "protocol.perturbations_per_device", "runs", "final accuracy (95% CI)", "target",
        "hours to target (95% CI)", "reached"]
    rows = [[c for c in line.split("  ") if c.strip()] for line in lines[1:5]]
    # v = 2: two runs, final accuracies 0.7 and 0.55 (mean 0.625); both reach 0.5 at step
    # 1 (26 s), one reaches 0.7 (at 39 s; the median with the other censored is 39 s)
    assert [c.strip() for c in rows[0][:2]] == ["2", "2"]
    assert rows[0][2].strip().startswith("0.625 (")
    assert rows[0][3].strip() == "0.5" and rows[0][-1].strip() == "2/2"
    assert rows[0][4].strip().startswith(f"{26 / 3600:.4g} (")
    assert [c.strip() for c in rows[1]][0] == "0.7" and rows[1][-1].strip() == "1/2"
    assert rows[1][1].strip().startswith(f"{39 / 3600:.4g} (")
    assert [c.strip() for c in rows[2][:3]] == ["5", "1", "0.8"]
    assert lines[5] == (f"files: {out / 'comparison.csv'}, {out / 'comparison.md'}, "
                        f"{out / 'curves.png'}, {out / 'curves_perturbations.png'}")
    assert max(len(line) for line in lines[:5]) <= 110  # narrow: fits a terminal


def test_compare_json_has_the_numbers_of_the_csv(make_run, tmp_path, capsys) -> None:
    dirs = _runs(make_run)
    out = tmp_path / "cmp"
    code = main(["compare", *map(str, dirs), "--by", "protocol.perturbations_per_device",
                 "--targets", "0.5,0.7", "--out", str(out), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)  # strict JSON: no NaN / Infinity tokens
    csv = pd.read_csv(out / "comparison.csv")
    assert doc["by"] == "protocol.perturbations_per_device" and doc["targets"] == [0.5, 0.7]
    assert [g["protocol.perturbations_per_device"] for g in doc["groups"]] == [2, 5]
    assert list(doc["groups"][0]) == list(csv.columns)
    for group, (_, row) in zip(doc["groups"], csv.iterrows()):
        for column, value in row.items():
            got = group[column]
            if isinstance(value, float) and math.isnan(value):
                assert got is None, column
            elif isinstance(value, float) and math.isinf(value):
                assert got == "inf", column
            else:
                assert got == value, column
    first = doc["groups"][0]
    assert first["final_accuracy"] == pytest.approx(0.625)
    assert first["tta_0.5_median_h"] == pytest.approx(26 / 3600)
    assert first["tta_0.7_reached"] == "1/2" and first["tta_0.5_ci_high_h"] == "inf"
    assert doc["groups"][1]["final_accuracy_ci_low"] is None  # one run: no interval
    assert doc["files"]["csv"] == str(out / "comparison.csv")


def test_narrow_table_of_systems_only_runs_has_no_target_rows() -> None:
    table = pd.DataFrame({"run": ["a", "b"], "runs": [1, 1], "simulated_hours": [1.5, 2.25],
                          "steps": [4.0, 6.0]})
    assert narrow_comparison(table).splitlines() == [
        "run  runs  simulated h  steps",
        "a    1     1.5          4",
        "b    1     2.25         6",
    ]


def test_unknown_by_key_gets_did_you_mean(make_run, tmp_path, capsys) -> None:
    dirs = _runs(make_run)
    code = main(["compare", *map(str, dirs), "--by", "policy.nme", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("fleetsim: error: --by 'policy.nme': no such scenario or summary key "
                          "in the loaded runs (did you mean 'policy.name'?); keys that differ")
