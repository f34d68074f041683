"""Sweep benchmark: 8 scenario × seed runs, sequential vs Ray, in one process.

Each run fine-tunes a small real model (tiny-bert, random init, real forward-gradient
numerics on BBC News) on a small fleet: a few seconds of CPU each.  ``--systems-only``
simulates a large churning fleet without numerics instead.  Baseline: ``--backend
sequential`` with one torch thread (``--baseline-threads all,1`` adds torch on every core,
what one ``fleetsim run`` after the other does by default; the speed-up is against the
fastest baseline).
New: one Ray task per run on a local Ray instance, ``max_parallel`` = cores, one torch
thread per task (so tasks do not fight over cores).  One untimed run first fills the
on-disk caches (tokenised data) that every later run reads, so no timed sweep pays for them.

The Ray instance is started, and its workers warmed (heavy imports and one untimed run each, as the
sequential process is), before the timed
sweep, as with a long-lived instance on a cluster; the start-up time is printed and a second
speed-up figure includes it.  Peak memory is the peak
resident memory of this process and all its children (Ray's raylet, GCS and workers),
sampled every 50 ms.  The machine's parallel headroom (pure-Python work in ``cores``
processes vs one after the other, measured before and after) is printed beside the
speed-up: on a shared machine other programs' load caps what any parallel sweep can reach.
The same 8 runs in ``cores`` plain processes (``multiprocessing``, warmed alike, no Ray) give
the ceiling for this workload (``RESULT sweep_workload_ceiling_speedup``) and Ray's share of
it (``RESULT sweep_ray_over_ceiling``).

    .venv/bin/python bench/sweep.py            # prints figures, ends with RESULT lines
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fleetsim.runner import run_scenario  # noqa: E402
from fleetsim.sweep import LoadedSweep, load_sweep, read_index, run_sweep  # noqa: E402
from fleetsim.sweep.ray_backend import start_ray  # noqa: E402

SCENARIO = """\
description: sweep benchmark run (tiny-bert, forward gradients, BBC News)
fleet:
  size: 16
  interruption: pause
traces:
  availability:
    kind: always_online
  network:
    type: fixed
    uplink_mbps: 10
model:
  name_or_path: tiny-bert
  max_seq_len: 64
peft:
  method: lora
  rank: 4
data:
  name: bbc_news
  batch_size: 8
  max_examples: 400
  max_eval_examples: 64
numerics:
  engine: torch
protocol:
  name: fwdllm
  devices_per_step: 4
  perturbations_per_device: 4
  batches_per_round: {batches}
  rounds: {rounds}
  eval_every_steps: 1000
run:
  name: bench
"""

# Without numerics a run of the small fleet above is over in a blink: the systems-only
# variant simulates a large churning fleet instead (pure-Python SimPy work, one core each).
SYSTEMS_ONLY_OVERRIDES = (
    "numerics.engine=none",
    "fleet.size=3000",
    "fleet.compute_noise_sigma=0.2",
    "traces.availability.kind=diurnal_model",
    "protocol.devices_per_step=100",
    "protocol.rounds=6",
    "protocol.batches_per_round=10",
)

SWEEP = """\
base: bench.yaml
grid:
  policy.name: [uniform, capability]
seeds: [0, 1, 2, 3]
"""


class PeakMemory:
    """Peak summed RSS of this process and its descendants, sampled in a thread, and the
    peak of each process by role (``per_role()``: this driver, Ray's services, each worker)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self.by_pid: dict[int, tuple[str, int]] = {}  # pid -> (role, peak RSS bytes)
        # pid -> (CPU seconds when first seen in the window, CPU seconds at the last sample)
        self.cpu_by_pid: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _role(proc: psutil.Process, me: psutil.Process) -> str:
        if proc.pid == me.pid:
            return "driver"
        try:
            name = " ".join(proc.cmdline()) or proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return "other"
        services = ("DashboardAgent", "RuntimeEnvAgent", "gcs_server", "raylet", "dashboard",
                    "log_monitor", "monitor.py")
        if any(service in name for service in services):
            return "ray service"
        if "default_worker.py" in name or name.startswith("ray::"):
            return "worker"  # ray::IDLE, ray::execute_run, ...
        return "ray service" if "ray" in name else "other"

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            role, peak = self.by_pid.get(proc.pid) or (self._role(proc, me), 0)
            self.by_pid[proc.pid] = (role, max(peak, rss))
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            cpu = times.user + times.system
            first = self.cpu_by_pid.get(pid := proc.pid, (cpu, cpu))[0]
            self.cpu_by_pid[pid] = (first, cpu)
        return total

    def cpu_per_role(self) -> str:
        """CPU seconds each role used while sampled: what a parallel sweep pays beyond the
        runs themselves (the driver's loop, Ray's services) on a machine with few cores."""
        used: dict[str, float] = {}
        for pid, (first, last) in self.cpu_by_pid.items():
            role = self.by_pid[pid][0]
            used[role] = used.get(role, 0.0) + (last - first)
        return ", ".join(f"{role} {used[role]:.1f} s" for role in
                         ("driver", "ray service", "worker", "other") if role in used)

    def per_role(self) -> str:
        """'driver 812 MiB; ray services 3 processes 310 MiB; worker x2: max 620 MiB ...'"""
        roles: dict[str, list[int]] = {}
        for role, peak in self.by_pid.values():
            roles.setdefault(role, []).append(peak)
        parts = []
        for role in ("driver", "ray service", "worker", "other"):
            peaks = roles.get(role)
            if not peaks:
                continue
            mib = [p / 2**20 for p in peaks]
            if role == "worker":
                parts.append(f"{len(mib)} workers: peak per worker max {max(mib):.0f} MiB, "
                             f"mean {sum(mib) / len(mib):.0f} MiB")
            else:
                parts.append(f"{role}{'s' if len(mib) > 1 else ''} ({len(mib)}): "
                             f"{sum(mib):.0f} MiB")
        return "; ".join(parts)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed_sweep(sweep: LoadedSweep, **kwargs) -> tuple[float, PeakMemory]:
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = run_sweep(sweep, progress=False, **kwargs)
        seconds = time.perf_counter() - start
    index = read_index(result.index_path)
    if not result.ok or result.executed != 8:
        print(index[["run_id", "status", "error"]].to_string(index=False))
        raise SystemExit(f"benchmark sweep did not finish all 8 runs: {result.counts}")
    per_run = index["host_seconds"]
    print(
        f"  {kwargs.get('backend')}: seconds per run on its worker: mean {per_run.mean():.2f}, "
        f"min {per_run.min():.2f}, max {per_run.max():.2f}"
    )
    print(f"  {kwargs.get('backend')}: peak memory by process: {memory.per_role()}")
    print(f"  {kwargs.get('backend')}: CPU seconds used during the sweep by process: "
          f"{memory.cpu_per_role()}")
    return seconds, memory


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def parallel_headroom(cores: int, n: int = 20_000_000) -> float:
    """Speed-up that ``cores`` processes of pure-Python work get on this machine right now
    (other programs' load included): the ceiling for any parallel sweep here."""
    import multiprocessing

    start = time.perf_counter()
    for _ in range(cores):
        _burn(n)
    sequential = time.perf_counter() - start
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_burn, [1000] * cores)  # start the processes outside the timing
        start = time.perf_counter()
        pool.map(_burn, [n] * cores)
        parallel = time.perf_counter() - start
    return sequential / parallel


def _pool_init(scenario: Path, overrides: tuple[str, ...], out: Path) -> None:
    from fleetsim.sweep.execute import limit_threads

    limit_threads(1)
    run_scenario(scenario, [*overrides, "run.seed=99", "run.progress=false"],
                 run_dir=out / f"warm-up-pool-{os.getpid()}")
    time.sleep(1.0)  # hold the process so the other initialisers run in the other workers


def _pool_run(args: tuple[Path, tuple[str, ...], Path, str, int]) -> float:
    scenario, overrides, out, policy, seed = args
    start = time.perf_counter()
    run_scenario(scenario, [*overrides, f"policy.name={policy}", f"run.seed={seed}",
                            "run.progress=false"], run_dir=out / f"pool-{policy}-{seed}")
    return time.perf_counter() - start


def workload_ceiling(cores: int, scenario: Path, overrides: tuple[str, ...], out: Path) -> float:
    """Seconds for the same 8 runs in ``cores`` plain processes (``multiprocessing``, spawn,
    one torch thread each, warmed by one untimed run each as the other sides are), no Ray:
    what any parallel sweep of *this* workload can reach on this machine now.  Two torch
    processes slow each other more than pure-Python work does (memory bandwidth), so this,
    not :func:`parallel_headroom`, is the ceiling to hold Ray's speed-up against."""
    import multiprocessing

    jobs = [(scenario, overrides, out, policy, seed)
            for policy in ("uniform", "capability") for seed in range(4)]
    with multiprocessing.get_context("spawn").Pool(
        cores, initializer=_pool_init, initargs=(scenario, overrides, out)
    ) as pool:
        pool.map(time.sleep, [0.0] * cores)  # wait until every worker is warm
        start = time.perf_counter()
        pool.map(_pool_run, jobs, chunksize=1)
        return time.perf_counter() - start


def warm_ray_workers(cores: int, scenario: Path, overrides: tuple[str, ...], out: Path) -> None:
    """Warm one worker per core as the sequential baseline's process is warmed: the runner's
    heavy imports (torch, transformers, peft) and one untimed run of the benchmark scenario
    (its in-process caches: model, tokenised data).  A long-lived Ray instance has warm
    workers, and the timed sweep then measures runs, not imports and first loads."""
    import ray

    @ray.remote(num_cpus=1, max_retries=0)
    def warm(k: int) -> int:
        from fleetsim.sweep.execute import limit_threads

        limit_threads(1)
        from fleetsim.runner import run_scenario as run

        run(scenario, [*overrides, "run.seed=99", "run.progress=false"],
            run_dir=out / f"warm-up-worker-{k}")
        time.sleep(1.0)  # hold the CPU slot so the other warm-up tasks land on other workers
        return os.getpid()

    pids = ray.get([warm.remote(k) for k in range(cores)])
    if len(set(pids)) != cores:
        print(f"note: warm-up reached {len(set(pids))} of {cores} workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 48 rounds x 4 steps: runs of ~12 s, long enough that Ray's per-task overhead is small
    parser.add_argument("--rounds", type=int, default=48, help="rounds per run")
    parser.add_argument("--batches", type=int, default=4, help="batches (steps) per round")
    parser.add_argument(
        "--systems-only",
        action="store_true",
        help="numerics.engine: none (no torch work: measures the simulator)",
    )
    parser.add_argument(
        "--baseline-threads",
        default="1",
        help="torch threads of the sequential baselines, comma-separated ('all' = every "
        "core); the speed-up is against the fastest (default: 1, the fastest here: with "
        "'all', torch's threads contend with each other and with anything else running)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra scenario override for every run (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the sweep folders")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1
    )
    baseline_threads = sorted(
        {cores if t.strip() == "all" else int(t) for t in args.baseline_threads.split(",")},
        reverse=True,
    )
    overrides = tuple(args.set) + (SYSTEMS_ONLY_OVERRIDES if args.systems_only else ())
    work = Path(tempfile.mkdtemp(prefix="fleetsim-bench-sweep-"))
    (work / "bench.yaml").write_text(SCENARIO.format(rounds=args.rounds, batches=args.batches))
    (work / "sweep.yaml").write_text(SWEEP)
    try:
        headroom_before = parallel_headroom(cores)
        # One untimed run fills the on-disk caches and this process's imports.
        run_scenario(
            work / "bench.yaml",
            [*overrides, "run.seed=99", "run.progress=false"],
            run_dir=work / "warm-up",
        )
        baselines = {}
        for threads in baseline_threads:
            seconds, memory = timed_sweep(
                load_sweep(work / "sweep.yaml", out=str(work / f"sequential-{threads}")),
                backend="sequential",
                torch_threads=threads,
                overrides=overrides,
            )
            baselines[threads] = (seconds, memory.peak)
            print(
                f"sequential: 8 runs in {seconds:.1f} s ({threads} torch thread"
                f"{'s' if threads > 1 else ''}), peak memory {memory.peak / 2**20:.0f} MiB"
            )
        best_threads = min(baselines, key=lambda t: baselines[t][0])
        seq_s, seq_mem = baselines[best_threads]

        ray_start = time.perf_counter()
        started = start_ray(None, cores)
        init_s = time.perf_counter() - ray_start
        try:
            warm_ray_workers(cores, work / "bench.yaml", overrides, work)
            startup_s = time.perf_counter() - ray_start
            ray_s, ray_memory = timed_sweep(
                load_sweep(work / "sweep.yaml", out=str(work / "ray")),
                backend="ray",
                max_parallel=cores,
                torch_threads=1,
                overrides=overrides,
            )
        finally:
            if started:
                import ray

                ray.shutdown()
        ray_mem = ray_memory.peak
        workers = [peak for role, peak in ray_memory.by_pid.values() if role == "worker"]
        print(
            f"ray: 8 runs in {ray_s:.1f} s ({cores} tasks x 1 torch thread), "
            f"peak memory {ray_mem / 2**20:.0f} MiB (all Ray processes included); "
            f"start-up {startup_s:.1f} s (ray.init {init_s:.1f} s + warming the workers)"
        )
        speedup = seq_s / ray_s
        with_startup = seq_s / (ray_s + startup_s)
        print(
            f"speed-up over the fastest sequential baseline ({best_threads} torch thread"
            f"{'s' if best_threads > 1 else ''}): {speedup:.2f}x (Ray running, workers warm), "
            f"{with_startup:.2f}x including the start-up; memory ratio ray/sequential "
            f"{ray_mem / seq_mem:.2f}"
        )
        for threads, (seconds, _) in baselines.items():
            print(f"  vs sequential with {threads} torch threads: {seconds / ray_s:.2f}x")
        pool_s = workload_ceiling(cores, work / "bench.yaml", overrides, work)
        print(f"the same 8 runs in {cores} plain processes (no Ray, warmed alike): "
              f"{pool_s:.1f} s, {seq_s / pool_s:.2f}x the sequential baseline: the ceiling "
              f"for this workload; Ray reaches {pool_s / ray_s:.0%} of it")
        headroom_after = parallel_headroom(cores)
        headroom = (headroom_before + headroom_after) / 2
        print(
            f"machine headroom: {cores} processes of pure-Python work run {headroom_before:.2f}x "
            f"(before) / {headroom_after:.2f}x (after) faster than one after the other (other "
            f"programs' load included); the sweep reaches {speedup / headroom:.0%} of the mean"
        )
        print(f"RESULT sweep_ray_speedup={speedup:.2f}")
        print(f"RESULT sweep_ray_speedup_with_startup={with_startup:.2f}")
        print(f"RESULT sweep_sequential_peak_mib={seq_mem / 2**20:.0f}")
        print(f"RESULT sweep_ray_peak_mib={ray_mem / 2**20:.0f}")
        print(f"RESULT sweep_machine_parallel_headroom={headroom:.2f}")
        print(f"RESULT sweep_workload_ceiling_speedup={seq_s / pool_s:.2f}")
        print(f"RESULT sweep_ray_over_ceiling={pool_s / ray_s:.2f}")
        print(f"RESULT sweep_ray_startup_s={startup_s:.1f}")
        print(f"RESULT sweep_ray_worker_peak_mib={max(workers, default=0) / 2**20:.0f}")
    finally:
        if args.keep:
            print(f"sweep folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
