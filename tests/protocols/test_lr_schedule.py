"""protocol.lr_schedule spans the steps the run takes (rounds × steps per round, capped by
max_steps), for every protocol; an unknowable plan is refused before the clock starts."""

from __future__ import annotations

import pytest
from fleet_harness import FakeEngine, build

from fleetsim.errors import FleetsimInputError


def lrs(h) -> list[float]:
    s = h.recorder.steps_frame()
    return s.loc[s["committed"], "lr"].tolist()


@pytest.mark.parametrize("name", ["fwdllm", "fedsgd", "kseed"])
def test_linear_spans_every_batch_of_every_round(name):
    # 3 rounds × 3 local batches = 9 steps: lr_k = 0.01 (1 − k/9); the last, k = 8, 0.01/9
    h = build(n=4, engine=FakeEngine(batches=3), protocol={
        "name": name, "devices_per_step": 4, "rounds": 3, "lr": 0.01, "lr_schedule": "linear"})
    assert h.protocol.step_plan() == (9, "protocol.rounds × steps per round (3 × 3)")
    got = lrs(h.run())
    assert len(got) == 9
    assert got == pytest.approx([0.01 * (1 - k / 9) for k in range(9)])
    assert got[-1] == pytest.approx(0.01 / 9) and min(got) > 0


def test_linear_with_batches_per_round_and_max_steps():
    h = build(n=4, engine=FakeEngine(batches=3), protocol={
        "devices_per_step": 4, "rounds": 3, "batches_per_round": 2, "lr": 0.02,
        "lr_schedule": "linear"}).run()
    assert lrs(h) == pytest.approx([0.02 * (1 - k / 6) for k in range(6)])
    # max_steps below rounds × batches: the schedule spans max_steps (last: lr / 5)
    h = build(n=4, engine=FakeEngine(batches=3), protocol={
        "devices_per_step": 4, "rounds": 3, "max_steps": 5, "lr": 0.02,
        "lr_schedule": "linear"}).run()
    got = lrs(h)
    assert len(got) == 5 and got[-1] == pytest.approx(0.02 / 5)
    # max_steps above what the rounds take: the rounds decide (9 steps)
    h = build(n=4, engine=FakeEngine(batches=3), protocol={
        "devices_per_step": 4, "rounds": 3, "max_steps": 50, "lr": 0.02,
        "lr_schedule": "linear"}).run()
    assert lrs(h)[-1] == pytest.approx(0.02 / 9)


def test_fedavg_one_step_per_round():
    # FedAvg commits once a round, whatever batches_per_round says about local training
    h = build(n=4, engine=FakeEngine(batches=10), protocol={
        "name": "fedavg", "devices_per_step": 4, "rounds": 4, "batches_per_round": 10,
        "lr": 0.01, "lr_schedule": "linear"}).run()
    assert lrs(h) == pytest.approx([0.01, 0.0075, 0.005, 0.0025])


class UnevenEngine(FakeEngine):
    """Client c holds 2 + c % 3 local batches (2, 3 or 4)."""

    def batches_per_client(self, client_id: int) -> int:
        return 2 + client_id % 3


def test_plan_that_depends_on_the_cohort_is_refused_or_fixed_by_max_steps():
    with pytest.raises(FleetsimInputError, match=r"^protocol\.lr_schedule: 'linear' needs"):
        build(n=6, engine=UnevenEngine(clients=6), protocol={
            "devices_per_step": 2, "rounds": 3, "lr_schedule": "linear"})
    # constant needs no plan: the summary still says what the rounds span
    h = build(n=6, engine=UnevenEngine(clients=6), protocol={"devices_per_step": 2, "rounds": 3})
    assert h.protocol.schedule_labels()["lr_planned_steps"] is None
    # every round takes at least 2 steps: max_steps 6 is sure to be reached
    h = build(n=6, engine=UnevenEngine(clients=6), protocol={
        "devices_per_step": 2, "rounds": 3, "max_steps": 6, "lr": 0.06,
        "lr_schedule": "linear"}).run()
    got = lrs(h)
    assert len(got) == 6 and got[-1] == pytest.approx(0.01)
    with pytest.raises(FleetsimInputError, match="max_steps at most 6"):
        build(n=6, engine=UnevenEngine(clients=6), protocol={
            "devices_per_step": 2, "rounds": 3, "max_steps": 7, "lr_schedule": "linear"})


def test_progress_bar_counts_the_steps_the_run_takes():
    from types import SimpleNamespace

    from fleetsim.callbacks import ProgressBar

    # max_steps 50, but 3 rounds × 3 batches end the run at 9
    h = build(n=4, engine=FakeEngine(batches=3), protocol={
        "devices_per_step": 4, "rounds": 3, "max_steps": 50})
    bar = ProgressBar(50, "test")
    bar.on_train_begin(SimpleNamespace(server=h.protocol))
    assert bar.bar.total == 9
    bar.on_train_end(None)


def test_constant_schedule_last_step_is_lr():
    h = build(n=4, engine=FakeEngine(batches=3), protocol={
        "devices_per_step": 4, "rounds": 2, "lr": 0.03}).run()
    got = lrs(h)
    assert len(got) == 6 and got[-1] == 0.03 and set(got) == {0.03}
    assert h.protocol.schedule_labels() == {
        "lr_schedule": "constant", "lr_planned_steps": 6,
        "lr_planned_from": "protocol.rounds × steps per round (2 × 3)"}
