"""The run's data plan is built in one pass (issue 25): one dataset read, one split, one
partition, for the checks, the engine and the model facts alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics import data as data_mod
from fleetsim.numerics import datasets, facts, partition
from fleetsim.numerics.data import DataConfig, build_data_plan, plan_data
from fleetsim.scenario.loader import load_scenario

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "sampled"])
def test_counts_only_plan_is_the_full_plans_counts(kind: str) -> None:
    cfg = DataConfig(name="bbc_news", partition=kind, alpha=0.3, batch_size=4,
                     examples_per_client=6, max_examples=90, max_eval_examples=20,
                     validation_fraction=0.1)
    full = plan_data(cfg, 7, seed=3, base_dir=Path("."))
    counts = build_data_plan(cfg, 7, seed=3, base_dir=Path("."), with_batches=False)
    # the right value, computed another way: the number of batches each client was cut
    assert counts.batch_counts == [len(b) for b in full.batches]
    assert full.batch_counts == counts.batch_counts
    assert counts.batches == []
    for name in ("train_idx", "eval_idx", "validation_idx", "labels"):
        assert np.array_equal(getattr(full, name), getattr(counts, name)), name
    assert full.num_labels == len(full.label_names) == 5  # BBC News: five topics


def test_the_plan_checks_clients_as_check_examples_per_client() -> None:
    cfg = DataConfig(name="bbc_news", partition="iid", max_examples=50, batch_size=4)
    with pytest.raises(FleetsimInputError) as old:
        partition.check_examples_per_client(cfg, 1000, 0, Path("."))
    with pytest.raises(FleetsimInputError) as new:
        build_data_plan(cfg, 1000, 0, Path("."), check_clients=True)
    assert str(new.value) == str(old.value)
    assert "fleet.size 1000" in str(new.value)
    # unchecked, the plan has the empty clients (a systems-only run accepts them)
    plan = build_data_plan(cfg, 1000, 0, Path("."), with_batches=False)
    assert len(plan.batch_counts) == 1000 and plan.batch_counts.count(0) > 0


@pytest.fixture
def dataset_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of a dataset, wherever fleetsim.numerics imported the reader."""
    reads: list[str] = []
    real = datasets.load_text_dataset

    def counted(cfg, base_dir):
        reads.append(cfg.name)
        return real(cfg, base_dir)

    for module in (datasets, data_mod, partition, facts):
        monkeypatch.setattr(module, "load_text_dataset", counted)
    return reads


def test_validate_reads_the_dataset_once(dataset_reads: list[str]) -> None:
    from fleetsim.runner import validate_loaded

    # torch scenario: the client check, the systems-only engine and its facts share one plan
    # (before: the check, then the engine's plan: two reads)
    built = validate_loaded(load_scenario(QUICKSTART, ["output.dir=/nonexistent"]))
    assert dataset_reads == ["bbc_news"]
    assert built.facts.num_labels == 5
