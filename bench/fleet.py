"""Scale benchmark of the fleet engine in systems-only mode (no gradients).

A small server loop drives :class:`fleetsim.fleet.Fleet`: each round it draws a random
cohort of idle devices (``fleetsim.rng``), gives each a uniform quota of perturbations,
waits for all receipts or a round deadline, cancels the stragglers and starts the next
round.  The fleet (DeviceTable + a churning periodic IntervalAvailability with several
windows per device per day) is synthesised with numpy.  Per-unit times come from the
traces latency model (``fleetsim.traces.latency``), as in a real run.

Each configuration runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) and its heap are its own.  Host seconds include synthesising the fleet.

The SimPy floor (issue 25) is :func:`simpy_floor`: a minimal SimPy model with the same
tasks and none of fleetsim's work, each task a process with a timeout per phase (six SimPy
events a task, the event count fleetsim had when the issue was written); ``clock / floor``
divides the fleet's host seconds less its synthesis by the floor's.  Since fleetsim now
runs most tasks on one timer (:mod:`fleetsim.fleet.timer_path`, two events a task), the
bench also prints the ratio to a floor with that structure, the stricter comparison.  Both
run the clock inside :func:`fleetsim.fleet.heap.frozen_heap`, as ``fleetsim.runner`` does.
The headline also profiles the 1,000-a-round configuration (cProfile, own time by area)
and prints the load average before and after, since the figures are meant for a quiet machine.

Usage::

    .venv/bin/python bench/fleet.py                 # headline: 1M x 1,000 and 10,000 x 200,
                                                    # 3 runs each (--repeat), medians
    .venv/bin/python bench/fleet.py --no-profile    # without the profile run
    .venv/bin/python bench/fleet.py --grid          # scaling grid 10k/100k/1M x 100/1k/10k
    .venv/bin/python bench/fleet.py --single 1000000 1000 200

Ends with ``RESULT fleet_1m_1000x200_host_s``, ``fleet_1m_10000x200_host_s``,
``fleet_over_simpy_floor_1m_1000x200`` (and at 10,000), ``fleet_over_one_timer_floor_1m_1000x200``
(and at 10,000: the same tasks, each one SimPy timeout, as fleetsim's timer path schedules
them) and ``fleet_1m_1000x200_peak_gib``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DAY_S = 86_400.0
SEED = 20260525
UNITS_PER_DEVICE = 10  # perturbations per device per round
ROUND_DEADLINE_S = 600.0
DOWNLOAD_BYTES = 450_340 * 4  # dense trainable vector (DistilBERT adapters, fp32)
MEMORY_BYTES = 600 << 20
START_S = 10 * 3600.0


def upload_seeds_and_scalars(units: int) -> int:
    return 16 + 12 * units  # header + (seed, jvp scalar) per perturbation


def synthesise_fleet(n: int, seed: int):
    """A DeviceTable and a churning availability trace for ``n`` devices (vectorised)."""
    from fleetsim.rng import stream
    from fleetsim.traces.base import DeviceTable, IntervalAvailability

    rng = stream(seed, "bench", "fleet", n)
    phone_models = ["Budget A", "Mid B", "Mid C", "Flagship D", "Flagship E"]
    model_index = rng.integers(0, len(phone_models), size=n).astype(np.int32)
    # Seconds per reference forward by phone model and backend (NaN: no such backend).
    cpu_s = np.array([6.0, 3.5, 3.0, 1.6, 1.2])
    gpu_s = np.array([np.nan, 1.4, 1.2, 0.6, 0.5])
    npu_s = np.array([np.nan, np.nan, 0.5, 0.2, 0.15])
    ram_gib = np.array([3, 4, 6, 8, 12], dtype=np.int64)
    ram = ram_gib[model_index] << 30
    network_types = ["wifi", "4g", "5g"]
    net = rng.choice(3, size=n, p=[0.6, 0.3, 0.1]).astype(np.int16)
    median_up = np.array([20e6, 6e6, 40e6])[net]
    median_down = np.array([60e6, 13e6, 200e6])[net]
    table = DeviceTable(
        phone_model_index=model_index,
        phone_models=phone_models,
        ram_bytes=ram,
        usable_ram_bytes=(ram * 0.4).astype(np.int64),
        network_type_index=net,
        network_types=network_types,
        uplink_bps=median_up * rng.lognormal(0.0, 0.6, size=n),
        downlink_bps=median_down * rng.lognormal(0.0, 0.6, size=n),
        ref_forward_s={
            "cpu": cpu_s[model_index] * rng.lognormal(0.0, 0.1, size=n),
            "gpu": gpu_s[model_index],
            "npu": npu_s[model_index],
        },
        source="bench: synthesised",
    )
    # 4 windows per device per day, about half the day online, repeating daily.
    windows = 4
    cuts = np.sort(rng.uniform(0.0, DAY_S, size=(n, 2 * windows)), axis=1)
    starts = cuts[:, 0::2].ravel()
    ends = cuts[:, 1::2].ravel()
    offsets = np.arange(0, n * windows + 1, windows, dtype=np.int64)
    availability = IntervalAvailability(offsets, starts, ends, period_s=DAY_S, label="bench")
    return table, availability


def run_one(n_devices: int, per_round: int, rounds: int, log_events: bool = True) -> dict:
    """Simulate ``rounds`` rounds; return host seconds, simulated seconds and counts."""
    import simpy

    from fleetsim.fleet import Fleet, FleetConfig, ReceiptStatus, Task, TaskKind
    from fleetsim.fleet.heap import frozen_heap
    from fleetsim.numerics.base import ModelFacts
    from fleetsim.record.events import EventLog
    from fleetsim.record.recorder import devices_frame
    from fleetsim.rng import stream

    t0 = time.perf_counter()
    table, availability = synthesise_fleet(n_devices, SEED)
    facts = ModelFacts(
        name="distilbert-base-uncased",
        n_params=66_000_000,
        trainable_params=450_340,
        n_layers=6,
        hidden_size=768,
        flops_per_token=2 * 43_000_000 + 4 * 6 * 128 * 768,
        seq_len=128,
        batch_size=8,
    )
    # Windows do not wrap around midnight, so few phones are online at 00:00: start the
    # run mid-morning, when about half the fleet is online.
    env = simpy.Environment(initial_time=START_S)
    log = EventLog(enabled=log_events)
    fleet = Fleet(
        env,
        table,
        availability,
        FleetConfig(size=n_devices, interruption="pause"),
        SEED,
        log,
        facts,
    )
    t_setup = time.perf_counter() - t0
    stats = {"dispatched": 0, "delivered": 0, "cancelled": 0, "refused": 0, "cohort_short": 0}
    cohorts: list[int] = []  # tasks dispatched each round: the floor runs the same

    def server():
        for r in range(rounds):
            eligible = fleet.idle_ids(MEMORY_BYTES)  # idle, online, RAM holds the job
            size = min(per_round, len(eligible))
            stats["cohort_short"] += per_round - size
            chosen = stream(SEED, "bench", "cohort", r).choice(eligible, size=size, replace=False)
            deadline = env.now + ROUND_DEADLINE_S
            events = [
                fleet.dispatch(
                    Task(
                        step=r,
                        device_id=int(d),
                        units=UNITS_PER_DEVICE,
                        kind=TaskKind.FORWARD_GRADIENT,
                        download_bytes=DOWNLOAD_BYTES,
                        upload_bytes=upload_seeds_and_scalars,
                        memory_bytes=MEMORY_BYTES,
                    )
                )
                for d in chosen
            ]
            stats["dispatched"] += len(events)
            cohorts.append(len(events))
            yield env.all_of(events) | env.timeout(deadline - env.now)
            if not all(event.triggered for event in events):
                for d, event in zip(chosen, events):
                    if not event.triggered:
                        fleet.cancel(int(d), r)
                # A fresh condition: SimPy detaches the nested one once the outer fired.
                yield env.all_of(events)
            for event in events:
                status = event.value.status
                if status in (ReceiptStatus.DELIVERED, ReceiptStatus.PARTIAL):
                    stats["delivered"] += 1
                elif status == ReceiptStatus.CANCELLED:
                    stats["cancelled"] += 1
                elif status == ReceiptStatus.REFUSED:
                    stats["refused"] += 1

    # Run until the server is done: timers of cancelled tasks stay in SimPy's queue and
    # would otherwise carry the clock past the last round.
    with frozen_heap():  # as fleetsim.runner runs the clock
        env.run(until=env.process(server()))
    # included in host time: part of every run
    totals = devices_frame(fleet.device_columns(env.now))
    # included too: the event log's columns in time order, as events.parquet is written
    # (tasks on one timer append their phase events when the timer fires)
    log.ordered()
    host_s = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return {
        "n_devices": n_devices,
        "per_round": per_round,
        "rounds": rounds,
        "host_s": host_s,
        "setup_s": t_setup,
        "peak_gib": peak_gib,
        "sim_s": env.now - START_S,
        "events": len(log),
        "simpy_events": scheduled_events(env),
        "devices_with_work": len(totals),
        "energy_kj": fleet.energy_totals()["total_j"] / 1000,
        "cohorts": cohorts,
        **stats,
    }


def simpy_floor(cohorts: list[int], seed: int = SEED, one_timer: bool = False) -> dict:
    """The SimPy floor: a minimal SimPy model of :func:`run_one`'s tasks with none of
    fleetsim's work.

    Round ``r`` starts ``cohorts[r]`` tasks (the fleet run's) in one zero-delay callback
    (as the fleet's dispatch batch does); the server waits for all results or the round
    deadline.  Each task is, by default, the per-phase model the issue measured against:
    a process that waits three timeouts (download, compute, upload; durations drawn up
    front with numpy) and succeeds a result event: six SimPy events a task.  With
    ``one_timer`` it is what fleetsim's timer path schedules: one timeout whose callback
    succeeds the result (two events a task).  What the floor leaves out is what fleetsim
    adds: availability windows, admission, energy and time accounting, the event log,
    receipts and the per-device ledger."""
    import simpy

    from fleetsim.fleet.heap import frozen_heap

    rng = np.random.default_rng(seed)
    n_tasks = sum(cohorts)
    first = np.concatenate(([0], np.cumsum(cohorts)[:-1])).tolist()
    durations = rng.uniform(1.0, 60.0, size=(n_tasks, 3)).tolist()
    t0 = time.perf_counter()
    env = simpy.Environment(initial_time=START_S)
    done = {"n": 0}

    def task(i: int, result: simpy.Event):
        down, comp, up = durations[i]
        yield env.timeout(down)
        yield env.timeout(comp)
        yield env.timeout(up)
        done["n"] += 1
        result.succeed(i)

    def timer_task(i: int, result: simpy.Event) -> None:
        def fired(_event) -> None:
            done["n"] += 1
            result.succeed(i)

        env.timeout(sum(durations[i])).callbacks.append(fired)

    def server():
        for r, size in enumerate(cohorts):
            results = [env.event() for _ in range(size)]

            def start(_event, r=r, results=results):
                for k, result in enumerate(results):
                    if one_timer:
                        timer_task(first[r] + k, result)
                    else:
                        env.process(task(first[r] + k, result))

            env.timeout(0).callbacks.append(start)
            yield env.all_of(results) | env.timeout(ROUND_DEADLINE_S)

    with frozen_heap():  # as the fleet's run is measured
        env.run(until=env.process(server()))
    host_s = time.perf_counter() - t0
    return {"host_s": host_s, "simpy_events": scheduled_events(env), "tasks": done["n"]}


def scheduled_events(env) -> int:
    """Events SimPy scheduled so far (its private event-id counter: read, not advanced,
    by copying it)."""
    import copy

    return next(copy.copy(env._eid))


def profile_breakdown(n_devices: int, per_round: int, rounds: int, top: int = 12) -> str:
    """Run :func:`run_one` under cProfile; own time by area (SimPy, the lifecycle, the
    event log, ...) and the top functions."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run_one(n_devices, per_round, rounds)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    areas = {
        "simpy": "/simpy/", "fleet lifecycle": "fleetsim/fleet/lifecycle",
        "fleet timer path": "fleetsim/fleet/timer_path",
        "fleet admission": "fleetsim/fleet/admission", "task end": "fleetsim/fleet/task_end",
        "job charges": "fleetsim/fleet/job_charges",
        "fleet dispatch/flush": "fleetsim/fleet/fleet.py",
        "device state": "fleetsim/fleet/device_state", "ledger": "fleetsim/fleet/ledger",
        "event log": "fleetsim/record/events", "availability": "fleetsim/traces/",
        "bench server": "bench/fleet.py", "numpy": "/numpy/",
    }
    own: dict[str, float] = {}
    rows = []
    total = 0.0
    for (filename, line, name), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        total += tottime
        area = next((a for a, key in areas.items() if key in filename), "other")
        own[area] = own.get(area, 0.0) + tottime
        rows.append((tottime, f"{Path(filename).name}:{line}({name})"))
    lines = [f"profile of {n_devices} x {per_round} x {rounds} under cProfile "
             f"({total:.1f} s with profiling overhead): own time by area"]
    for area, t in sorted(own.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {area:<22} {t:7.2f} s  {100 * t / total:5.1f} %")
    lines.append("  top functions by own time:")
    for t, where in sorted(rows, reverse=True)[:top]:
        lines.append(f"  {t:7.2f} s  {where}")
    return "\n".join(lines)


def run_in_subprocess(*args: str) -> dict:
    """One configuration (``--single`` / ``--floor``) in a fresh interpreter: its peak RSS
    and its heap are its own."""
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def headline(rounds: int, profile: bool, repeat: int) -> None:
    """The issue-25 figures: 1M phones at 1,000 and 10,000 a round, each beside the SimPy
    floors with the same tasks, a profile breakdown, and the RESULT lines.

    Each configuration runs ``repeat`` times, the fleet and its floors in turn (each in a
    fresh process), and each figure is the median over the repeats (a ratio: of the
    per-repeat ratios).  On a shared 2-core VM one process's time varies by up to ~30 %
    from run to run (the first process after an idle spell is the slowest), and a single
    pair can land on either side of a goal; every repeat is printed."""
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures = {}
    for per_round in (1_000, 10_000):
        runs = []
        for k in range(repeat):
            row = run_in_subprocess("--single", "1000000", str(per_round), str(rounds))
            with tempfile.NamedTemporaryFile("w", suffix=".json") as cohorts:
                json.dump(row["cohorts"], cohorts)
                cohorts.flush()
                floor = run_in_subprocess("--floor", cohorts.name)
                timer_floor = run_in_subprocess("--floor", cohorts.name, "--one-timer")
            sim = row["host_s"] - row["setup_s"]
            runs.append((row, sim / floor["host_s"], sim / timer_floor["host_s"]))
            print(f"1,000,000 phones x {per_round} a round x {rounds} rounds, run {k + 1} of "
                  f"{repeat}: {row['host_s']:.2f} host-s ({row['setup_s']:.2f} s fleet "
                  f"synthesis), peak {row['peak_gib']:.3f} GiB, {row['simpy_events']} SimPy "
                  f"events, {row['events']} logged events, {row['delivered']} delivered, "
                  f"{row['cancelled']} cancelled")
            print(f"  SimPy floor with the same {row['dispatched']} tasks in the same cohorts: "
                  f"{floor['host_s']:.2f} host-s, {floor['simpy_events']} SimPy events; "
                  f"clock / floor = {runs[-1][1]:.2f}")
            print(f"  one-timer floor (a timeout a task, fleetsim's own event structure): "
                  f"{timer_floor['host_s']:.2f} host-s, {timer_floor['simpy_events']} SimPy "
                  f"events; clock / one-timer floor = {runs[-1][2]:.2f}", flush=True)
        figures[per_round] = (
            float(np.median([r[0]["host_s"] for r in runs])),
            float(np.median([r[1] for r in runs])),
            float(np.median([r[2] for r in runs])),
            max(r[0]["peak_gib"] for r in runs),
        )
        ratios = sorted(r[1] for r in runs)
        print(f"  median of {repeat}: host {figures[per_round][0]:.2f} s, clock / floor "
              f"{figures[per_round][1]:.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})")
    if profile:
        print(profile_breakdown(1_000_000, 1_000, rounds))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tag = f"x{rounds}"
    print(f"RESULT fleet_1m_1000{tag}_host_s={figures[1_000][0]:.2f}")
    print(f"RESULT fleet_1m_10000{tag}_host_s={figures[10_000][0]:.2f}")
    print(f"RESULT fleet_over_simpy_floor_1m_1000{tag}={figures[1_000][1]:.2f}")
    print(f"RESULT fleet_over_simpy_floor_1m_10000{tag}={figures[10_000][1]:.2f}")
    print(f"RESULT fleet_over_one_timer_floor_1m_1000{tag}={figures[1_000][2]:.2f}")
    print(f"RESULT fleet_over_one_timer_floor_1m_10000{tag}={figures[10_000][2]:.2f}")
    print(f"RESULT fleet_1m_1000{tag}_peak_gib={figures[1_000][3]:.3f}")


def grid(sizes: list[int], cohorts: list[int], rounds: int) -> None:
    """Scaling over fleet size and cohort size (each configuration in its own process)."""
    results = {}
    header = (
        f"{'fleet':>9} {'per round':>9} {'rounds':>6} {'host s':>8} {'setup s':>8} "
        f"{'peak GiB':>8} {'sim h':>7} {'events':>9} {'delivered':>9} {'cancelled':>9} "
        f"{'short':>7}"
    )
    print(header)
    for n in sizes:
        for k in cohorts:
            row = run_in_subprocess("--single", str(n), str(k), str(rounds))
            results[(n, k)] = row
            print(
                f"{n:>9} {k:>9} {row['rounds']:>6} {row['host_s']:>8.2f} {row['setup_s']:>8.2f} "
                f"{row['peak_gib']:>8.3f} {row['sim_s'] / 3600:>7.2f} {row['events']:>9} "
                f"{row['delivered']:>9} {row['cancelled']:>9} {row['cohort_short']:>7}",
                flush=True,
            )
    sizes, cohorts = sorted(sizes), sorted(cohorts)
    for k in cohorts:
        if len(sizes) > 1:
            small, large = results[(sizes[0], k)], results[(sizes[-1], k)]
            ratio = large["host_s"] / small["host_s"]
            print(
                f"fleet-size scaling at {k}/round: {sizes[-1]}/{sizes[0]} devices "
                f"({sizes[-1] / sizes[0]:.0f}x) -> host time x{ratio:.2f}"
            )
    for n in sizes:
        if len(cohorts) > 1:
            small, large = results[(n, cohorts[0])], results[(n, cohorts[-1])]
            ratio = (large["host_s"] - large["setup_s"]) / (small["host_s"] - small["setup_s"])
            tasks = large["dispatched"] / max(small["dispatched"], 1)
            print(
                f"cohort scaling at {n} devices: {cohorts[-1]}/{cohorts[0]} per round "
                f"({tasks:.0f}x tasks dispatched) -> simulation host time x{ratio:.2f}, "
                f"per task x{ratio / tasks:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--grid", action="store_true",
                        help="the scaling grid (--sizes x --per-round) instead of the headline")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--per-round", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument("--repeat", type=int, default=3,
                        help="headline: runs of each configuration and its floors (medians)")
    parser.add_argument("--single", type=int, nargs=3, metavar=("N", "PER_ROUND", "ROUNDS"))
    parser.add_argument("--floor", metavar="COHORTS_JSON",
                        help="the SimPy floor for the cohort sizes in this JSON list")
    parser.add_argument("--one-timer", action="store_true",
                        help="with --floor: one timeout a task instead of a process")
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(*args.single)))
    elif args.floor:
        cohorts = json.loads(Path(args.floor).read_text())
        print(json.dumps(simpy_floor(cohorts, one_timer=args.one_timer)))
    elif args.grid:
        grid(args.sizes, args.per_round, args.rounds)
    else:
        headline(args.rounds, not args.no_profile, max(1, args.repeat))


if __name__ == "__main__":
    main()
