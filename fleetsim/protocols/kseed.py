"""FedKSeed and FedKSeed-Pro (Qin et al., ICML 2024, "Federated Full-Parameter Tuning of
Billion-Sized Language Models with Communication Cost under 18 Kilobytes", arXiv 2312.06353).

What defines it, and how fleetsim does it:

* **A finite seed pool** (``protocol.seed_pool`` = K; the paper: 4,096).  Every
  perturbation is a pool entry's: the server assigns perturbation (step, device, k) the
  index j < K drawn from ``fleetsim.rng.stream(seed, "seed-pool-draw", step, device, k)``,
  and the numerics regenerate v_j from the pool seed alone
  (:func:`fleetsim.numerics.perturbation.pool_perturbation`), so equal indices give equal v.
* **(seed index, scalar) pairs up**: 8 bytes per perturbation (4-byte index, fp32 scalar).
* **One accumulated scalar per seed on the server**: after a step commits with learning
  rate η_t, h_j += η_t · Σ_{k: j_k = j} w_k d_k / Σ_k w_k over the step's perturbations
  (d_k = ∇L·v_{j_k}, w_k its staleness weight), so θ_t = θ_0 − Σ_j h_j v_j exactly
  (:attr:`KSeedProtocol.accumulated`; the server optimiser must be plain SGD, checked when
  the scenario is loaded).
* **Catch-up down**: the K accumulated scalars (4 K bytes) or the pairs committed since the
  device's last sync (8 bytes each), whichever is smaller
  (:meth:`fleetsim.protocols.model_sync.ModelSync.pool_download`).
* **FedKSeed-Pro** (``protocol.seed_sampling: importance``): seed j is drawn with
  probability p_j = softmax(ψ̃)_j, ψ̃ = min-max normalisation of ψ, ψ_j = the mean of
  |clip(g, −c, c)| over seed j's history of scalar gradients (the paper's FedKSeed-Pro
  seed probabilities; the authors' code, zhenqincn/FedKSeed
  ``Server.calculate_probabilities``: history initialised with one 0,
  c = ``bias_loss_clip`` = 1,000, + 1e-10 in the normalising denominator).  The history
  holds every scalar a committed step used, as uploaded (before weighting); the
  probabilities of step t come from the steps committed before t, as the paper's clients
  sample with the probabilities of the round they start.  The numerics hand the scalars over
  as numbers (``StepEstimate.extra[POOL_SCALARS]``); the draw is the server's.

What fleetsim leaves out: a FedKSeed client takes τ *sequential* local ZO-SGD steps
(θ moves between its perturbations, one batch each) before uploading τ pairs; here every
device computes its ``perturbations_per_device`` perturbations at the step's θ on one batch
and the server commits step-synchronously (FwdLLM's step loop; one fleetsim step is one
FedKSeed round with τ = ``perturbations_per_device``).  Clients weigh equally (the code's
``equal_weight``), not by local data size.  Full-parameter tuning is the PEFT's choice
(``peft.method``), not implied.

``protocol.seed_pool: null`` turns the pool off: per-(step, device, k) seeds, 12-byte
(64-bit seed, fp32 scalar) pairs both ways — exactly ``fwdllm`` with ``upload: seeds`` and
``download: seeds`` (the same ``seed_catch_up``): the only setting in which the two
protocols are the same algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Optional

import numpy as np

from fleetsim.numerics_api import POOL_SCALARS, StepEstimate
from fleetsim.protocols.config import ProtocolConfig
from fleetsim.protocols.fwdllm import FwdLLMProtocol
from fleetsim.protocols.model_sync import POOL_PAIR_BYTES
from fleetsim.protocols.server import StepServer
from fleetsim.rng import stream

#: FedKSeed-Pro's clip of a scalar gradient before its magnitude enters the history mean:
#: the authors' code's ``--bias_loss_clip`` default (zhenqincn/FedKSeed ``main.py``).
IMPORTANCE_CLIP = 1000.0
#: Initial entry of every seed's scalar history (the authors' ``--grad_initial`` default).
IMPORTANCE_INITIAL = 0.0
#: Added to max − min in the min-max normalisation (the authors' ``min_max_norm``).
IMPORTANCE_EPS = 1e-10


def importance_probabilities(abs_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """FedKSeed-Pro's seed probabilities, shape (K,), summing to 1.

    ``abs_sum[j]``: Σ |clip(g, −IMPORTANCE_CLIP, IMPORTANCE_CLIP)| over seed j's history
    (its initial entry included); ``count[j]``: the history's length (≥ 1).  ψ = abs_sum /
    count; p = softmax((ψ − min ψ) / (max ψ − min ψ + 1e-10)).  Source: Qin et al. 2024
    (FedKSeed-Pro) and the authors' code, zhenqincn/FedKSeed ``Server.calculate_probabilities``."""
    psi = np.asarray(abs_sum, dtype=np.float64) / np.asarray(count, dtype=np.float64)
    norm = (psi - psi.min()) / (psi.max() - psi.min() + IMPORTANCE_EPS)
    e = np.exp(norm - norm.max())
    return e / e.sum()


class KSeedProtocol(FwdLLMProtocol):
    name = "kseed"

    def __init__(self, config: ProtocolConfig) -> None:
        super().__init__(config)
        k = config.seed_pool
        self.pool_size: Optional[int] = None if k is None else int(k)
        #: h_j: the server's accumulated scalar per pool seed (θ = θ_0 − Σ_j h_j v_j).
        self.accumulated = np.zeros(k or 0, dtype=np.float64)
        #: FedKSeed-Pro's history per seed, as a running Σ|clip(g)| and length.
        self.history_abs_sum = np.full(k or 0, abs(IMPORTANCE_INITIAL), dtype=np.float64)
        self.history_count = np.ones(k or 0, dtype=np.int64)
        self._cdf: dict[int, np.ndarray] = {}  # step -> cumulative seed probabilities
        self._last: Optional[StepEstimate] = None

    @classmethod
    def method_label(cls, cfg: ProtocolConfig, server_optimizer: str) -> str:
        """The method's name in its paper: FedKSeed, FedKSeed-Pro (importance sampling), or
        seed-only FwdLLM when the pool is off (``seed_pool: null``)."""
        if cfg.seed_pool is None:
            return "FwdLLM (seed-only upload and download)"
        label = "FedKSeed-Pro" if cfg.seed_sampling == "importance" else "FedKSeed"
        return label if server_optimizer == "sgd" else f"{label} (server {server_optimizer})"

    # ------------------------------------------------------------------ payloads
    def download_payload(self, server: StepServer, device_ids: np.ndarray) -> np.ndarray:
        """Seeds down, whatever ``protocol.download`` says.  With a pool: the K accumulated
        scalars or the 8-byte pairs since the device's last sync, whichever is smaller;
        without: the 12-byte (seed, scalar) pairs of every committed step the device has not
        applied.  ``protocol.seed_catch_up: dense_if_smaller`` caps either at the dense
        vector."""
        if self.pool_size is None:
            return server.seed_download(device_ids)
        out = server.sync.pool_download(device_ids, server.step, self.pool_size)
        if self.cfg.seed_catch_up == "dense_if_smaller":
            out = np.minimum(out, server.dense_download(device_ids))
        return out

    def upload_fn(self, server: StepServer) -> Callable[[int], int]:
        """Seeds up: 8 bytes (4-byte pool index + fp32 scalar) per delivered perturbation
        with a pool; 12 bytes (64-bit seed + fp32 scalar) without."""
        if self.pool_size is None:
            return server.seed_upload()
        return lambda units: POOL_PAIR_BYTES * int(units)

    # ------------------------------------------------------------------ the pool
    def seed_probabilities(self, step: int) -> Optional[np.ndarray]:
        """Probabilities of the pool seeds for step ``step``'s perturbations, shape (K,);
        None under uniform sampling or without a pool."""
        cdf = self._cdf_at(step)
        if cdf is None:
            return None
        return np.diff(np.concatenate([[0.0], cdf]))

    def _cdf_at(self, step: int) -> Optional[np.ndarray]:
        if self.pool_size is None or self.cfg.seed_sampling != "importance":
            return None
        if step not in self._cdf:
            # steps are registered when the one before commits; the first step sees the
            # initial history (uniform)
            self._cdf[step] = np.cumsum(importance_probabilities(self.history_abs_sum,
                                                                 self.history_count))
        return self._cdf[step]

    def pool_seeds(
        self, server: StepServer, step: int, device_id: int, ks: tuple[int, ...]
    ) -> Optional[tuple[int, ...]]:
        """Pool index of each perturbation: uniform over K, or by FedKSeed-Pro's
        probabilities of ``step``; one draw from the stream ("seed-pool-draw", step,
        device, k) each, so the order of calls changes nothing."""
        if self.pool_size is None:
            return None
        cdf = self._cdf_at(step)
        out = []
        for k in ks:
            rng = stream(server.ctx.seed, "seed-pool-draw", int(step), int(device_id), int(k))
            if cdf is None:
                out.append(int(rng.integers(self.pool_size)))
            else:
                j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
                out.append(min(j, self.pool_size - 1))
        return tuple(out)

    # ------------------------------------------------------------------ commits
    def aggregate(
        self, server: StepServer, step: int, work, previous: Optional[StepEstimate]
    ) -> StepEstimate:
        self._last = super().aggregate(server, step, work, previous)
        return self._last

    def one_step(self, server: StepServer, cohort: np.ndarray, batch_index: int) -> Generator:
        before = server.step
        ok = yield from super().one_step(server, cohort, batch_index)
        if server.step > before and self.pool_size is not None:
            # the committed row of step ``before`` carries the lr its update was applied with
            row = server.ctx.recorder.step_rows[-1]
            if int(row["step"]) != before or not row["committed"]:
                raise RuntimeError(f"kseed: no committed row for step {before}")
            self._note_pool_commit(before, float(row["lr"]), self._last)
        return ok

    def _note_pool_commit(self, step: int, lr: float, estimate: Optional[StepEstimate]) -> None:
        """Step ``step`` committed ``estimate`` at learning rate ``lr``: add its per-seed
        scalars to h and its raw scalars to the history, and fix the next step's
        probabilities."""
        scalars = estimate.extra.get(POOL_SCALARS, []) if estimate is not None else []
        if scalars:
            j = np.asarray([s[0] for s in scalars], dtype=np.int64)
            d = np.asarray([s[1] for s in scalars], dtype=np.float64)
            w = np.asarray([s[2] for s in scalars], dtype=np.float64)
            mass = float(w.sum())
            if mass > 0:
                coefficient = np.bincount(j, weights=w * d, minlength=self.pool_size) / mass
                if np.isfinite(coefficient).all():  # else the engine did not apply it
                    self.accumulated += lr * coefficient
            finite = np.isfinite(d)
            clipped = np.abs(np.clip(d[finite], -IMPORTANCE_CLIP, IMPORTANCE_CLIP))
            self.history_abs_sum += np.bincount(j[finite], weights=clipped,
                                                minlength=self.pool_size)
            self.history_count += np.bincount(j[finite], minlength=self.pool_size)
        if self.cfg.seed_sampling == "importance":
            self._cdf.pop(step + 1, None)
            self._cdf_at(step + 1)
            keep = step + 1 - self.cfg.commit.max_staleness
            for old in [s for s in self._cdf if s < keep]:
                del self._cdf[old]


__all__ = ["IMPORTANCE_CLIP", "KSeedProtocol", "importance_probabilities"]
