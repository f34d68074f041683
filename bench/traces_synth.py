"""Fleet synthesis benchmark: time and peak memory to build 10k / 100k / 1M devices.

Runs the vectorised builder and, as the baseline, a per-device Python loop
doing the same draws (timed on 10k devices only and extrapolated linearly),
then the vectorised interval lookup against a per-device ``searchsorted`` loop.

    .venv/bin/python bench/traces_synth.py
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np

from fleetsim.rng import stream
from fleetsim.traces import build_devices
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.config import TracesConfig
from fleetsim.traces.tables import catalogue_for, population_weights


def per_device_loop(cfg: TracesConfig, n: int, seed: int) -> np.ndarray:
    """Baseline: one population draw per device in Python (what vectorising replaces)."""
    cat, _ = catalogue_for(cfg.catalogue, Path("."))
    w = population_weights(cfg.population, cat, Path("."))
    cdf = np.cumsum(w)
    out = np.empty(n, dtype=np.int32)
    for i in range(n):
        u = stream(seed, "population", i).random()
        out[i] = int(np.searchsorted(cdf, u, side="right"))
    return out


def timed_build(cfg: TracesConfig, n: int) -> tuple[float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    table, avail = build_devices(cfg, n, 0, 30 * 86400.0, Path("."))
    avail.is_available(table.device_ids, 3600.0)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 2**20


def main() -> None:
    cfg = TracesConfig()
    build_devices(cfg, 10, 0, 1.0, Path("."))  # warm the catalogue cache and imports
    results = {}
    for n in (10_000, 100_000, 1_000_000):
        s, mib = timed_build(cfg, n)
        results[n] = s
        print(f"synthesise {n:>9,} devices: {s:7.3f} s, peak traced memory {mib:8.1f} MiB")
    t0 = time.perf_counter()
    per_device_loop(cfg, 10_000, 0)
    loop_10k = time.perf_counter() - t0
    print(
        f"baseline per-device loop, 10,000 devices: {loop_10k:.3f} s "
        f"(extrapolated 1M: {loop_10k * 100:.1f} s); speed-up at 1M: "
        f"{loop_10k * 100 / results[1_000_000]:.0f}x"
    )

    # interval lookup: vectorised binary search vs per-device searchsorted
    rng = np.random.default_rng(0)
    n, k = 200_000, 12
    starts = np.sort(rng.uniform(0, 86400 * 7, (n, k)), axis=1)
    nxt = np.roll(starts, -1, axis=1)
    nxt[:, -1] = np.inf
    ends = np.minimum(starts + rng.uniform(1, 600, (n, k)), nxt)
    starts, ends = starts.ravel(), ends.ravel()
    ok = ends > starts
    starts, ends = starts[ok], ends[ok]
    counts = ok.reshape(n, k).sum(axis=1)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    tr = IntervalAvailability(offsets, starts, ends)
    ids = np.arange(n)
    t0 = time.perf_counter()
    fast = tr.is_available(ids, 3.5 * 86400)
    vec_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = 20_000
    slow = np.empty(m, dtype=bool)
    for i in range(m):
        lo, hi = offsets[i], offsets[i + 1]
        j = lo + np.searchsorted(ends[lo:hi], 3.5 * 86400, side="right")
        slow[i] = j < hi and starts[j] <= 3.5 * 86400
    loop_s = (time.perf_counter() - t0) * n / m
    assert np.array_equal(fast[:m], slow)
    print(
        f"interval lookup, {n:,} devices: vectorised {vec_s * 1e3:.1f} ms, per-device loop "
        f"{loop_s * 1e3:.0f} ms (extrapolated), ratio {loop_s / vec_s:.0f}x"
    )
    print(f"RESULT synth_10k_host_s={results[10_000]:.4f}")
    print(f"RESULT synth_100k_host_s={results[100_000]:.4f}")
    print(f"RESULT synth_1m_host_s={results[1_000_000]:.4f}")
    print(f"RESULT synth_speedup_vs_loop={loop_10k * 100 / results[1_000_000]:.1f}")
    print(f"RESULT interval_lookup_speedup={loop_s / vec_s:.1f}")


if __name__ == "__main__":
    main()
