"""Which θ each device holds, and what catching up to the server's θ costs on the wire.

A device holds θ of the step it last downloaded for (none before its first task).  To
work for step ``s`` it needs θ_s: the dense trainable vector (4 bytes a parameter), or
— seed-only protocols — the (seed, scalar) pairs of every committed step it has not
applied, 12 bytes a pair (a 64-bit seed and an fp32 scalar), replayed on the phone as
DeComFL's ``client_last_updates`` and FedKSeed's scalar history do.  θ_0 is built on
every phone from the run's seed, so a seed replay starts there.

With a seed pool of K seeds (FedKSeed, Qin et al., ICML 2024, arXiv 2312.06353) a pair is
a 4-byte seed index and an fp32 scalar (8 bytes), and the server also holds one
accumulated scalar per seed: a lagging phone fetches those K scalars (4 K bytes) or the
pairs committed since its last sync, whichever is smaller (:meth:`ModelSync.pool_download`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fleetsim.fleet.work import WorkReceipt

#: Bytes on the wire for one perturbation in seed mode: a 64-bit seed and an fp32 scalar.
SEED_RECORD_BYTES = 12
#: Bytes of one fp32 parameter.
FP32 = 4
#: Bytes on the wire for one (seed index, scalar) pair of a seed pool: a 4-byte index into
#: the K ≤ 2³² shared candidate seeds and an fp32 scalar (FedKSeed's upload).
POOL_PAIR_BYTES = 8
#: Bytes of one accumulated scalar of the pool (fp32; FedKSeed's download is K of them).
POOL_SCALAR_BYTES = 4


class ModelSync:
    """Per-device θ versions (``held``: step, -1 for none) and the committed steps' pairs."""

    def __init__(self, n_devices: int) -> None:
        self.held = np.full(int(n_devices), -1, dtype=np.int64)
        # Σ (seed, scalar) pairs of the steps committed before step k: what a replay sends.
        self._pairs_before: list[int] = [0]

    def dense_download(self, device_ids: np.ndarray, step: int, dense_bytes: int) -> np.ndarray:
        """``dense_bytes`` for each device that does not hold θ_step, else 0; int64."""
        behind = self.held[np.asarray(device_ids, dtype=np.int64)] != int(step)
        return np.where(behind, int(dense_bytes), 0).astype(np.int64)

    def seed_download(self, device_ids: np.ndarray, step: int) -> np.ndarray:
        """12 bytes per pair of every committed step before ``step`` each device has not
        applied; int64."""
        return (SEED_RECORD_BYTES * self.pairs_behind(device_ids, step)).astype(np.int64)

    def pairs_behind(self, device_ids: np.ndarray, step: int) -> np.ndarray:
        """(seed, scalar) pairs committed before ``step`` that each device has not applied;
        int64."""
        before = np.asarray(self._pairs_before, dtype=np.int64)
        held = np.maximum(self.held[np.asarray(device_ids, dtype=np.int64)], 0)
        return before[min(int(step), len(before) - 1)] - before[held]

    def pool_download(self, device_ids: np.ndarray, step: int, pool_size: int) -> np.ndarray:
        """FedKSeed's catch-up: min(4 × K bytes for the K accumulated scalars, 8 bytes per
        (seed index, scalar) pair since the device's last sync); 0 for a device that holds
        θ_step; int64."""
        pairs = self.pairs_behind(device_ids, step)
        return np.minimum(POOL_PAIR_BYTES * pairs,
                          POOL_SCALAR_BYTES * int(pool_size)).astype(np.int64)

    def note_commit(self, step: int, pairs: int) -> None:
        """Step ``step`` committed an update of ``pairs`` (seed, scalar) pairs."""
        while len(self._pairs_before) <= step:
            self._pairs_before.append(self._pairs_before[-1])
        self._pairs_before.append(self._pairs_before[step] + int(pairs))
        del self._pairs_before[step + 2:]

    def note_downloads(self, receipts: Iterable[WorkReceipt]) -> None:
        """Devices whose download completed now hold θ of their task's step."""
        for r in receipts:
            if r.bytes_down > 0:
                d = int(r.device_id)
                self.held[d] = max(int(self.held[d]), int(r.step))
