"""shared/cases: carried_late_work_not_stale and seed_download_missed_steps, as tests of the
right value (see each case's README for the expected behaviour)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from fleetsim.numerics import engine as engine_module
from fleetsim.protocols.server import SEED_RECORD_BYTES
from fleetsim.runner import run_scenario

CASES = Path(__file__).resolve().parents[2].parent / "shared" / "cases"


def _case(name: str, tmp_path: Path) -> Path:
    src = CASES / name
    if not src.is_dir():
        pytest.skip(f"needs ../shared/cases/{name}")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return dst


def test_carried_late_work_is_evaluated_at_its_own_step(tmp_path, monkeypatch):
    case = _case("carried_late_work_not_stale", tmp_path)
    seen: list[tuple[int, int, int]] = []  # (estimated step, device, source step)
    original = engine_module.TorchEngine.forward_gradient

    def spy(self, step, work, previous=None):
        seen.extend((step, w.device_id, step if w.step is None else w.step) for w in work)
        return original(self, step, work, previous)

    monkeypatch.setattr(engine_module.TorchEngine, "forward_gradient", spy)
    out = run_scenario(case / "scenario.yaml", run_dir=tmp_path / "out")
    events = pd.read_parquet(out / "events.parquet")
    receipts = events[events.kind == "receipt"]
    stale = receipts[receipts.staleness > 0]
    assert len(stale), "the slow phone's work should arrive after its step committed"
    applied = stale["detail"].str.extract(r"applied_step=(\d+)")[0].astype(int)
    # the engine was asked to evaluate every stale receipt at the step it was computed for
    for (dev, step), at in zip(stale[["device_id", "step"]].itertuples(index=False), applied):
        assert (at, dev, step) in seen
    steps = pd.read_parquet(out / "steps.parquet")
    assert steps["staleness_max"].max() == receipts["staleness"].max()
    assert steps["stale_units"].sum() == stale["units"].sum()


@pytest.mark.parametrize("pool,record,total", [
    # seed_pool null: fleetsim's per-step seeds, 12-byte (64-bit seed, fp32) records; the
    # README's hand count for this scenario: 3,744 bytes
    ("null", SEED_RECORD_BYTES, 3744),
    # kseed's default, FedKSeed's pool of 4,096: 8-byte (index, fp32) pairs, capped at the
    # 4 × 4,096 bytes of the accumulated scalars (never reached here): 3,744 × 8 / 12
    ("4096", 8, 2496),
])
def test_seed_only_download_replays_missed_steps(tmp_path, monkeypatch, pool, record, total):
    case = _case("seed_download_missed_steps", tmp_path)
    monkeypatch.chdir(case)
    out = run_scenario(case / "scenario.yaml", [f"protocol.seed_pool={pool}"],
                       run_dir=tmp_path / "out")
    events = pd.read_parquet(out / "events.parquet")
    steps = pd.read_parquet(out / "steps.parquet")
    pairs = steps[steps.committed].set_index("step")["perturbations"].to_dict()
    held: dict[int, int] = {}
    charged_total = needed_total = 0
    for r in events[events.kind == "download"].sort_values("seq").itertuples():
        since = held.get(r.device_id, 0)
        needed = record * sum(pairs.get(k, 0) for k in range(since, r.step))
        if pool != "null":
            needed = min(needed, 4 * int(pool))
        assert r.payload_bytes == needed, (r.device_id, r.step)
        held[r.device_id] = r.step
        charged_total += r.payload_bytes
        needed_total += needed
    assert needed_total == charged_total == total
