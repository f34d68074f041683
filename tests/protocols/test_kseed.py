"""FedKSeed / FedKSeed-Pro (Qin et al., ICML 2024, arXiv 2312.06353): the seed pool, its
payloads, and the importance probabilities, each against a hand computation.

The numerics side (pool perturbations, θ rebuilt from the accumulated scalars) is in
tests/numerics/test_seed_pool.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fleet_harness import FakeEngine, build

from fleetsim.numerics_api import POOL_SCALARS, StepEstimate
from fleetsim.protocols.config import KSEED_PAPER_POOL, ProtocolConfig
from fleetsim.protocols.kseed import KSeedProtocol, importance_probabilities


def _frames(h) -> tuple[pd.DataFrame, pd.DataFrame]:
    return h.recorder.events.to_frame(), h.recorder.steps_frame()


def test_kseed_defaults_to_the_papers_pool():
    assert KSEED_PAPER_POOL == 4096
    assert ProtocolConfig(name="kseed").seed_pool == 4096
    assert ProtocolConfig(name="kseed", seed_pool=None).seed_pool is None
    assert ProtocolConfig(name="fwdllm").seed_pool is None
    # a resolved scenario written out and read back keeps K
    dumped = ProtocolConfig(name="kseed").model_dump()
    assert ProtocolConfig(**dumped).seed_pool == 4096


def test_bytes_per_client_per_round_are_the_papers_17984():
    # The paper's setting: K = 4,096 seeds, τ = 200 perturbations per client per round.
    # Per round a client uploads τ (index, scalar) pairs (8 B each) and downloads the K
    # accumulated fp32 scalars (4 B each) because the pairs committed since its last sync
    # (12 clients × 200 = 2,400 pairs = 19,200 B) are more: 4·4096 + 8·200 = 17,984 B,
    # "under 18 kilobytes" (18 × 1024 = 18,432 B).
    n, tau, rounds = 12, 200, 4
    h = build(n=n, unit_s=np.full(n, 0.01),
              protocol={"name": "kseed", "devices_per_step": n, "perturbations_per_device": tau,
                        "rounds": rounds, "batches_per_round": 1},
              engine=FakeEngine(batches=1)).run()
    events, steps = _frames(h)
    assert steps["committed"].all() and len(steps) == rounds
    moved = events[events.kind.isin(["download", "upload"])]
    per = moved.groupby(["device_id", "step"])["payload_bytes"].sum()
    assert len(per) == n * rounds
    first = per[per.index.get_level_values("step") == 0]
    later = per[per.index.get_level_values("step") > 0]
    assert (first == 8 * tau).all()  # θ_0 comes from the run seed: nothing to download
    assert (later == 4 * 4096 + 8 * tau).all() and int(later.iloc[0]) == 17_984
    assert int(later.iloc[0]) < 18 * 1024
    # the step rows total the same bytes
    assert steps["bytes_up"].tolist() == [n * 8 * tau] * rounds
    assert steps["bytes_down"].tolist() == [0] + [n * 4 * 4096] * (rounds - 1)


def test_bytes_when_the_pairs_are_fewer_than_k_scalars():
    # 10 clients × 3 perturbations = 30 pairs a step (240 B) < 4·4096: the pairs go down.
    n, v = 10, 3
    h = build(n=n, protocol={"name": "kseed", "devices_per_step": n,
                             "perturbations_per_device": v, "rounds": 3, "batches_per_round": 1},
              engine=FakeEngine(batches=1)).run()
    events, steps = _frames(h)
    assert steps["bytes_down"].tolist() == [0, n * 8 * n * v, n * 8 * n * v]
    assert steps["bytes_up"].tolist() == [n * 8 * v] * 3


def test_pool_indices_reach_the_numerics_and_stay_in_the_pool():
    h = build(n=4, protocol={"name": "kseed", "seed_pool": 16, "devices_per_step": 4,
                             "perturbations_per_device": 5, "rounds": 2, "batches_per_round": 2},
              engine=FakeEngine(batches=2)).run()
    work = [w for kind, _, items in h.engine.calls if kind == "fg" for w in items]
    assert work
    for w in work:
        assert w.pool_seeds is not None and len(w.pool_seeds) == len(w.perturbations)
        assert all(0 <= j < 16 for j in w.pool_seeds)
    drawn = {j for w in work for j in w.pool_seeds}
    assert len(drawn) > 8  # 80 uniform draws over 16 seeds cover most of them
    # the draw is keyed by (step, device, k): a second run draws the same indices
    again = build(n=4, protocol={"name": "kseed", "seed_pool": 16, "devices_per_step": 4,
                                 "perturbations_per_device": 5, "rounds": 2,
                                 "batches_per_round": 2}, engine=FakeEngine(batches=2)).run()
    assert [w.pool_seeds for _, _, ws in again.engine.calls for w in ws] == \
        [w.pool_seeds for _, _, ws in h.engine.calls for w in ws]


def test_kseed_without_a_pool_is_exactly_seed_only_fwdllm():
    """The one setting in which kseed and fwdllm are the same algorithm."""
    common = {"devices_per_step": 3, "perturbations_per_device": 2, "rounds": 3,
              "batches_per_round": 2}
    a = build(n=6, protocol={"name": "kseed", "seed_pool": None, **common},
              engine=FakeEngine(batches=2)).run()
    b = build(n=6, protocol={"name": "fwdllm", "upload": "seeds", "download": "seeds", **common},
              engine=FakeEngine(batches=2)).run()
    ea, sa = _frames(a)
    eb, sb = _frames(b)
    pd.testing.assert_frame_equal(sa, sb)
    pd.testing.assert_frame_equal(ea, eb)
    assert all(w.pool_seeds is None for _, _, ws in a.engine.calls for w in ws)
    # with FedKSeed's pool (the kseed default) the runs differ: 8-byte pairs, pool seeds
    c = build(n=6, protocol={"name": "kseed", **common}, engine=FakeEngine(batches=2)).run()
    _, sc = _frames(c)
    assert sc["bytes_up"].sum() == sa["bytes_up"].sum() * 8 // 12
    assert all(w.pool_seeds is not None for _, _, ws in c.engine.calls for w in ws)


def test_importance_probabilities_by_hand():
    # Histories (each starting with the authors' initial 0): seed 0 [0] → ψ 0; seed 1
    # [0, 2, −4] → ψ 2; seed 2 [0, 1] → ψ 0.5.  Min-max: [0, 1, 0.25]; softmax.
    p = importance_probabilities(np.array([0.0, 6.0, 1.0]), np.array([1, 3, 2]))
    e = [1.0, math.e, math.exp(0.25)]
    expected = [x / sum(e) for x in e]
    assert p == pytest.approx(expected, rel=1e-8)
    assert p == pytest.approx([0.19990775, 0.54340561, 0.25668664], abs=1e-7)
    # equal histories: uniform
    assert importance_probabilities(np.zeros(4), np.ones(4)) == pytest.approx([0.25] * 4)


def _commit(proto: KSeedProtocol, step: int, lr: float, scalars: list) -> None:
    est = StepEstimate(step=step, n_perturbations=len(scalars), n_devices=1,
                       extra={POOL_SCALARS: scalars})
    proto._note_pool_commit(step, lr, est)


def test_server_accumulates_per_seed_scalars_and_history():
    cfg = ProtocolConfig(name="kseed", seed_pool=3, seed_sampling="importance")
    proto = KSeedProtocol(cfg)
    assert proto.method_label(cfg, "sgd") == "FedKSeed-Pro"
    assert proto.seed_probabilities(0) == pytest.approx([1 / 3] * 3)
    # step 0: seed 1 gets d = 2 (weight 1) and d = −4 (weight 0.5), seed 2 gets d = 5000
    # (clipped to 1000 in the history only); mass 2.5
    _commit(proto, 0, 0.1, [[1, 2.0, 1.0], [1, -4.0, 0.5], [2, 5000.0, 1.0]])
    h = [0.0, 0.1 * (2.0 - 2.0) / 2.5, 0.1 * 5000.0 / 2.5]
    assert proto.accumulated == pytest.approx(h)
    assert proto.history_count.tolist() == [1, 3, 2]
    assert proto.history_abs_sum == pytest.approx([0.0, 6.0, 1000.0])
    # ψ = [0, 2, 500]: min-max [0, 0.004, 1]
    e = [1.0, math.exp(2 / 500), math.e]
    assert proto.seed_probabilities(1) == pytest.approx([x / sum(e) for x in e], rel=1e-8)
    # the probabilities of step 1 are fixed when step 0 commits: later commits leave them
    _commit(proto, 1, 0.1, [[0, 900.0, 1.0]])
    assert proto.seed_probabilities(1) == pytest.approx([x / sum(e) for x in e], rel=1e-8)
    assert proto.accumulated[0] == pytest.approx(0.1 * 900.0)


def test_importance_draws_follow_the_probabilities():
    h = build(n=2, protocol={"name": "kseed", "seed_pool": 3, "seed_sampling": "importance",
                             "devices_per_step": 2, "rounds": 1, "batches_per_round": 1})
    proto = h.protocol.protocol
    _commit(proto, 0, 0.1, [[1, 2.0, 1.0], [1, -4.0, 1.0], [2, 1.0, 1.0]])
    p = proto.seed_probabilities(1)  # ψ = [0, 2, 0.5] as in the hand example
    assert p == pytest.approx([0.19990775, 0.54340561, 0.25668664], abs=1e-7)
    n = 6000
    draws = np.array([j for d in range(n // 20)
                      for j in proto.pool_seeds(h.protocol, 1, d, tuple(range(20)))])
    freq = np.bincount(draws, minlength=3) / len(draws)
    sd = np.sqrt(p * (1 - p) / len(draws))
    assert np.all(np.abs(freq - p) < 5 * sd), (freq, p)
    # uniform sampling draws each seed about equally
    proto.cfg = proto.cfg.model_copy(update={"seed_sampling": "uniform"})
    draws = np.array([j for d in range(n // 20)
                      for j in proto.pool_seeds(h.protocol, 1, d, tuple(range(20)))])
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.all(np.abs(freq - 1 / 3) < 5 * np.sqrt(2 / 9 / len(draws)))


def test_labels():
    label = KSeedProtocol.method_label
    assert label(ProtocolConfig(name="kseed"), "sgd") == "FedKSeed"
    assert label(ProtocolConfig(name="kseed", seed_pool=None), "sgd") == \
        "FwdLLM (seed-only upload and download)"
