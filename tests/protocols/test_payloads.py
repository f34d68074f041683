"""Bytes follow the protocol: every download and upload against a hand count.

The hand count is computed from the outputs alone (events and steps tables), the way
shared/cases/seed_download_missed_steps/check.py does, independently of the protocol's
own payload functions."""

from __future__ import annotations

import pandas as pd
import pytest
from fleet_harness import FACTS, FakeEngine, build

from fleetsim.protocols.server import SEED_RECORD_BYTES

DENSE = FACTS.trainable_params * 4


def _frames(h) -> tuple[pd.DataFrame, pd.DataFrame]:
    return h.recorder.events.to_frame(), h.recorder.steps_frame()


def _seed_replay_needed(
    events: pd.DataFrame, steps: pd.DataFrame, record: int = SEED_RECORD_BYTES
) -> list[tuple[int, int, int]]:
    """(device, charged, needed) per download: ``record`` B × the pairs of every committed
    step since the step whose θ the device last downloaded (θ_0 needs nothing)."""
    pairs = steps[steps.committed].set_index("step")["perturbations"].to_dict()
    held: dict[int, int] = {}
    out = []
    for r in events[events.kind == "download"].sort_values("seq").itertuples():
        since = held.get(r.device_id, 0)
        needed = record * sum(pairs.get(k, 0) for k in range(since, r.step))
        out.append((r.device_id, int(r.payload_bytes), needed))
        held[r.device_id] = r.step
    return out


@pytest.mark.parametrize("protocol", [
    {"name": "kseed", "seed_pool": None},
    {"name": "fwdllm", "download": "seeds", "upload": "seeds"},
])
def test_seed_download_replays_every_missed_step(protocol):
    # 8 devices, 2 per round, one batch per round: most devices sit out several steps.
    h = build(n=8, protocol={**protocol, "devices_per_step": 2, "perturbations_per_device": 4,
                             "rounds": 12, "batches_per_round": 1},
              engine=FakeEngine(batches=1)).run()
    events, steps = _frames(h)
    rows = _seed_replay_needed(events, steps)
    assert rows, "no download happened"
    assert all(charged == needed for _, charged, needed in rows), rows
    # the test means something: some device was several steps behind
    assert max(needed for *_, needed in rows) >= 3 * 8 * SEED_RECORD_BYTES
    # totals in steps.parquet agree with the events
    assert steps["bytes_down"].sum() == sum(c for _, c, _ in rows)
    ups = events[events.kind == "upload"]
    assert (ups["payload_bytes"] == SEED_RECORD_BYTES * ups["units"]).all()


@pytest.mark.parametrize("pool", [4096, 20])
def test_seed_pool_download_is_pairs_or_k_scalars(pool):
    # shared/cases/seed_download_missed_steps under FedKSeed's pool: a device k steps behind
    # downloads the 8-byte (index, scalar) pairs of those k steps, or the K accumulated fp32
    # scalars when fewer bytes (K = 20: 80 B, fewer than two steps' 16 pairs = 128 B).
    h = build(n=8, protocol={"name": "kseed", "seed_pool": pool, "devices_per_step": 2,
                             "perturbations_per_device": 4, "rounds": 12,
                             "batches_per_round": 1},
              engine=FakeEngine(batches=1)).run()
    events, steps = _frames(h)
    rows = _seed_replay_needed(events, steps, record=8)
    assert rows
    assert all(charged == min(needed, 4 * pool) for _, charged, needed in rows), rows
    assert max(needed for *_, needed in rows) >= 3 * 8 * 8  # someone was 3+ steps behind
    if pool == 20:
        assert any(needed > 4 * pool for *_, needed in rows)  # the K-scalar cap was used
    ups = events[events.kind == "upload"]
    assert (ups["payload_bytes"] == 8 * ups["units"]).all()


def test_dense_if_smaller_caps_the_catch_up():
    h = build(n=8, protocol={"name": "kseed", "seed_pool": None, "devices_per_step": 2,
                             "perturbations_per_device": 40, "rounds": 12, "batches_per_round": 1,
                             "seed_catch_up": "dense_if_smaller"},
              engine=FakeEngine(batches=1)).run()
    events, steps = _frames(h)
    rows = _seed_replay_needed(events, steps)
    assert all(charged == min(needed, DENSE) for _, charged, needed in rows)
    assert any(needed > DENSE for *_, needed in rows)  # the cap was exercised


@pytest.mark.parametrize("name", ["fwdllm", "fedsgd", "fedavg"])
def test_dense_payloads(name):
    h = build(n=4, protocol={"name": name, "devices_per_step": 4, "perturbations_per_device": 3,
                             "rounds": 2}, engine=FakeEngine(batches=2)).run()
    events, steps = _frames(h)
    downs = events[events.kind == "download"]
    ups = events[events.kind == "upload"]
    # a device downloads θ once per step it works on (4 × trainable parameters) ...
    per_step = downs.groupby(["device_id", "step"]).size()
    assert (per_step == 1).all()
    assert (downs["payload_bytes"] == DENSE).all()
    worked = events[events.kind == "assign"].groupby(["device_id", "step"]).size()
    assert len(per_step) == len(worked)
    # ... and uploads one dense vector per task with work
    assert (ups["payload_bytes"] == DENSE).all()
    assert steps["bytes_up"].sum() == DENSE * len(ups)
    assert steps["bytes_down"].sum() == DENSE * len(downs)


def test_variance_repeat_downloads_nothing():
    h = build(n=4, protocol={"devices_per_step": 4, "perturbations_per_device": 2, "rounds": 1,
                             "batches_per_round": 1,
                             "variance": {"enabled": True, "threshold": 0.5, "max_repeats": 3}},
              engine=FakeEngine(batches=1, variance_script=[9.0, 9.0, 0.1])).run()
    events, steps = _frames(h)
    assert steps["attempt"].tolist() == [0, 1, 2]
    downs = events[events.kind == "download"]
    assert len(downs) == 4 and (downs["payload_bytes"] == DENSE).all()  # attempt 0 only
    assert steps["bytes_down"].tolist() == [4 * DENSE, 0, 0]


def test_feasibility_assumes_a_typical_device_download():
    # Before the first step a device holds no θ: a dense protocol must download it all.
    dense = build(n=4, protocol={"devices_per_step": 2})
    assert dense.protocol.download_bytes() == DENSE
    # A seed replay starts from θ_0, which every phone builds from the seed: nothing yet.
    seeds = build(n=4, protocol={"name": "kseed", "devices_per_step": 2})
    assert seeds.protocol.download_bytes() == 0
    seeds = build(n=4, protocol={"name": "kseed", "seed_pool": None, "devices_per_step": 2})
    assert seeds.protocol.download_bytes() == 0
