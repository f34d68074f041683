"""The estimate dispatch of a :class:`~fleetsim.numerics.engine.TorchEngine`: each step's
delivered work → forward gradients (grouped by the step each item was computed for, the host
estimator chosen per group), backprop and local-training estimates, and their pooling.

:class:`EstimateDispatch` is a part of the engine (a mixin): it reads θ through
:class:`~fleetsim.numerics.theta.ThetaState` (``_snapshot``, ``_source``), the model inputs
through :class:`~fleetsim.numerics.inputs.ModelInputs` (``batch_inputs``, ``loss_fn``,
``batched_loss_fn``) and the engine's ``plan``, ``cfg``, ``seed``, ``shapes``, ``names``.

Variance statistic (FwdLLM's variance-controlled pacing): FwdLLM's ``calculate_var``
(``forward_training/utils/fwdgrad_utils.py`` lines 79–90 of UbiquitousLearning/FwdLLM):
the step's forward gradients w·d_k v_k on the check tensor(s), in the order the engine
receives them (attempts one after another), are split into the first ⌊n/2⌋ and the rest;
each half's mean g₁, g₂ is taken and the statistic is the per-coordinate unbiased
two-sample variance of the two means averaged over coordinates,
``mean_i var(g₁ᵢ, g₂ᵢ) = mean_i (g₁ᵢ − g₂ᵢ)² / 2`` (:class:`~fleetsim.numerics.pool.SplitHalves`;
paper thresholds 0.1 DistilBERT / 0.2 BERT; like theirs it scales with the gradient's
magnitude).  With fewer than two perturbations it is NaN (undefined).  The scale-free
``‖g₁−g₂‖² / (‖g₁‖²+‖g₂‖²)`` is reported in ``StepEstimate.extra['variance_normalised']``
(≈ 1 for pure noise, → 0 as the halves agree).  The check tensor ('paper') is one tensor,
by default the first trainable tensor of the lowest adapted layer; 'all' uses every
trainable tensor (then about n/2 copies of the trainable vector are held per step).
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np

from fleetsim.numerics.base import GradientWork, StepEstimate
from fleetsim.numerics.data import batch_of
from fleetsim.numerics.pool import EstimatePool
from fleetsim.numerics_api import POOL_SCALARS


class EstimateDispatch:
    """Forward-gradient, backprop and local-training estimates of delivered work."""

    def _perturbations(
        self, step: int, device_id: int, ks: tuple[int, ...],
        previous_gradient: Optional[list[Any]] = None,
        pool_seeds: Optional[tuple[int, ...]] = None,
    ) -> list[Any]:
        """The perturbations v_k of ``step`` for one device, as drawn when the device
        computed them (discriminative sampling ranks by the gradient before ``step``); with
        ``pool_seeds``, the seed pool's entries instead (the same v wherever drawn)."""
        from fleetsim.numerics.perturbation import stack_perturbations, stack_pool_perturbations

        if pool_seeds is not None:
            if len(pool_seeds) != len(ks):
                raise ValueError(f"device {device_id}: {len(pool_seeds)} pool seeds for "
                                 f"{len(ks)} perturbations")
            return stack_pool_perturbations(self.seed, pool_seeds, self.shapes,
                                            device=self.device, dtype=self.dtype)
        disc = self.cfg.discriminative
        use_disc = disc.enabled and previous_gradient is not None and step % disc.every == 0
        return stack_perturbations(
            self.seed, step, device_id, ks, self.shapes,
            previous_gradient=previous_gradient if use_disc else None,
            candidates=disc.candidates if use_disc else 1,
            chunk_elements=disc.chunk_elements, device=self.device, dtype=self.dtype,
        )

    def _empty_pool(self) -> EstimatePool:
        import torch

        zeros = [torch.zeros(s, dtype=torch.float32, device=self.device) for s in self.shapes]
        return EstimatePool(zeros)

    def _fault(self, step: int, device_id: int, detail: str, skipped: list) -> None:
        from fleetsim.numerics.errors import NumericalFault

        if self.cfg.on_nonfinite == "stop":
            raise NumericalFault(step, device_id, detail)
        skipped.append({"device_id": device_id, "reason": detail})

    def step_estimator(self, perturbations: list[int]) -> str:
        """The host estimator for one step's work (``perturbations[i]``: device i's count):
        the configured one, or for ``auto`` the cheaper exact method
        (:func:`fleetsim.numerics.crossdevice.choose_exact`)."""
        from fleetsim.numerics.crossdevice import choose_exact

        if self.cfg.estimator != "auto":
            return self.cfg.estimator
        return choose_exact(perturbations, self.cfg.device, self.forward_mode)

    @property
    def forward_mode(self) -> bool:
        """Whether ``jvp`` runs the hand-written forward-mode pass on this model
        (:func:`fleetsim.numerics.forward_mode.plan_for`; cross-device batching only),
        rather than ``torch.func.jvp``."""
        from fleetsim.numerics.forward_mode import plan_for

        return bool(self.host_batching == "stacked" and self.cfg.cross_device_batching
                    and plan_for(self.model, list(self.names), self.start_layer) is not None)

    def _directional(
        self, source: int, params: dict, prev_grad: Optional[list[Any]],
        items: list[GradientWork], estimator: str,
    ) -> list[tuple[list[Any], Any, float]]:
        """Per work item (all computed for step ``source``, at θ = ``params``): its
        tangents (engine order, (v, *shape) each), d_k (v,) and base loss.  Stackable
        models run all items in as few calls as the token budget allows
        (:mod:`fleetsim.numerics.crossdevice`); otherwise one item at a time."""
        from fleetsim.numerics.crossdevice import Cohort, cohort_directional
        from fleetsim.numerics.estimators import directional_derivatives
        from fleetsim.numerics.estimators.directional import _forward_ad_attention

        tangents = [
            self._perturbations(source, item.device_id, item.perturbations, prev_grad,
                                item.pool_seeds)
            for item in items
        ]
        indices = [batch_of(self.plan, item.client_id, item.batch_index) for item in items]
        if self.host_batching == "stacked" and self.cfg.cross_device_batching:
            derivs, base = cohort_directional(
                self.model, self.start_layer, params, Cohort.of(indices, self.batch_inputs),
                [dict(zip(self.names, t)) for t in tangents], estimator, self.cfg.h,
                self.host_chunk, _forward_ad_attention,
            )
            return [(t, d, float(b)) for t, d, b in zip(tangents, derivs, base.tolist())]
        out = []
        for tangent, rows in zip(tangents, indices):
            inputs, mask, labels = self.batch_inputs(rows)
            derivs, base_loss = directional_derivatives(
                self.loss_fn(inputs, mask, labels), params, dict(zip(self.names, tangent)),
                estimator, self.cfg.h, self.host_chunk,
                self.batched_loss_fn(inputs, mask, labels),
            )
            out.append((tangent, derivs, base_loss))
        return out

    def forward_gradient(
        self, step: int, work: list[GradientWork], previous: Optional[StepEstimate] = None
    ) -> StepEstimate:
        import torch

        started = time.perf_counter()
        pool = previous.handle.copy() if previous is not None else self._empty_pool()
        skipped: list = list(previous.extra.get("skipped", [])) if previous is not None else []
        scalars: list = list(previous.extra.get(POOL_SCALARS, [])) if previous is not None else []
        self._snapshot(step)
        # work of different source steps runs at different θ: batch per source step
        groups: dict[int, list[GradientWork]] = {}
        for item in work:
            if item.perturbations and item.weight > 0:
                groups.setdefault(step if item.step is None else int(item.step), []).append(item)
        chosen: dict[str, int] = {}
        for items in groups.values():
            source, params, prev_grad = self._source(step, items[0])
            estimator = self.step_estimator([len(item.perturbations) for item in items])
            chosen[estimator] = chosen.get(estimator, 0) + 1
            self.estimator_calls[estimator] = self.estimator_calls.get(estimator, 0) + 1
            results = self._directional(source, params, prev_grad, items, estimator)
            for item, (tangents_list, derivs, base_loss) in zip(items, results):
                self.host_perturbations += len(item.perturbations)
                if not math.isfinite(base_loss):
                    self._fault(step, item.device_id, "loss", skipped)
                    continue
                if not bool(torch.isfinite(derivs).all()):
                    self._fault(step, item.device_id, "directional derivative", skipped)
                    continue
                weight = float(item.weight)
                weights = derivs * weight
                for index, tangent in enumerate(tangents_list):
                    pool.sums[index] += torch.einsum("k,k...->...", weights, tangent.float())
                # FwdLLM's calculate_var list: one entry per perturbation, in order
                for k in range(len(item.perturbations)):
                    pool.halves.append(
                        [weights[k] * tangents_list[i][k].float() for i in self.check_indices],
                        weight,
                    )
                pool.count += len(item.perturbations)
                pool.mass += len(item.perturbations) * weight
                pool.loss_sum += base_loss
                pool.loss_n += 1
                pool.devices.add(item.device_id)
                if item.pool_seeds is not None:
                    scalars.extend([int(j), float(d), float(item.weight)]
                                   for j, d in zip(item.pool_seeds, derivs.tolist()))
        self.host_estimate_s += time.perf_counter() - started
        estimate = self._estimate_from_pool(step, pool, skipped)
        estimate.extra["estimator"] = chosen
        if scalars:
            estimate.extra[POOL_SCALARS] = scalars
        return estimate

    def _estimate_from_pool(self, step: int, pool: EstimatePool, skipped: list) -> StepEstimate:
        n = pool.count
        variance = math.nan
        normalised = math.nan
        means = pool.halves.half_means()
        if means is not None:
            g1, g2 = means
            squared_diff = sum(float((a - b).pow(2).sum()) for a, b in zip(g1, g2))
            numel = sum(a.numel() for a in g1)
            variance = squared_diff / 2 / numel
            scale = sum(float(a.pow(2).sum()) + float(b.pow(2).sum()) for a, b in zip(g1, g2))
            normalised = squared_diff / scale if scale > 0 else math.nan
        return StepEstimate(
            step=step,
            n_perturbations=n,
            n_devices=len(pool.devices),
            loss=pool.loss_sum / pool.loss_n if pool.loss_n else math.nan,
            variance=variance,
            handle=pool,
            extra={"skipped": skipped, "variance_normalised": normalised,
                   "halves": pool.halves.sizes()},
        )

    @staticmethod
    def gradient_of(estimate: StepEstimate) -> list[Any]:
        """The estimate as a list of tensors (engine order): the mean over perturbations,
        or over devices for backprop / local-train estimates."""
        pool: EstimatePool = estimate.handle
        denominator = pool.mass if pool.mass > 0 else pool.weight
        if denominator <= 0:
            return [t * 0 for t in pool.sums]
        return [t / denominator for t in pool.sums]

    # -------------------------------------------------------------- backprop etc.
    def backprop_gradient(self, step: int, work: list[GradientWork]) -> StepEstimate:
        from fleetsim.numerics.estimators import exact_gradient

        pool = self._empty_pool()
        skipped: list = []
        self._snapshot(step)
        for item in work:
            if item.weight <= 0:
                continue
            _, params, _ = self._source(step, item)
            inputs, mask, labels = self.batch_inputs(
                batch_of(self.plan, item.client_id, item.batch_index)
            )
            grad, loss = exact_gradient(self.loss_fn(inputs, mask, labels), params)
            if not math.isfinite(loss):
                self._fault(step, item.device_id, "loss", skipped)
                continue
            for index, name in enumerate(self.names):
                pool.sums[index] += grad[name].float() * float(item.weight)
            pool.weight += float(item.weight)
            pool.loss_sum += loss
            pool.loss_n += 1
            pool.devices.add(item.device_id)
        estimate = self._estimate_from_pool(step, pool, skipped)
        estimate.n_perturbations = 0
        return estimate

    def local_train(
        self, step: int, device_id: int, client_id: int, batch_indices: list[int], lr: float,
        source_step: Optional[int] = None,
    ) -> StepEstimate:
        import torch

        from fleetsim.numerics.estimators import exact_gradient

        self._snapshot(step)
        _, start, _ = self._source(
            step, GradientWork(device_id, client_id, 0, (), step=source_step)
        )
        local = {n: start[n].detach().clone().float() for n in self.names}
        losses = []
        skipped: list = []
        for batch_index in batch_indices:
            inputs, mask, labels = self.batch_inputs(
                batch_of(self.plan, client_id, batch_index)
            )
            cast = {n: t.to(self.dtype) for n, t in local.items()}
            grad, loss = exact_gradient(self.loss_fn(inputs, mask, labels), cast)
            if not math.isfinite(loss):
                self._fault(step, device_id, "loss", skipped)
                break
            losses.append(loss)
            with torch.no_grad():
                for name in self.names:
                    local[name] -= lr * grad[name].float()
        pool = self._empty_pool()
        if not skipped:
            for index, name in enumerate(self.names):
                # −(θ_local − θ_start): the device's own update, applied to today's θ
                pool.sums[index] += start[name].detach().float() - local[name]
            pool.weight = 1
            pool.devices.add(device_id)
            pool.loss_sum = float(np.mean(losses)) if losses else math.nan
            pool.loss_n = 1
        estimate = self._estimate_from_pool(step, pool, skipped)
        estimate.n_perturbations = 0
        return estimate

    def average(self, estimates: list[StepEstimate]) -> StepEstimate:
        if not estimates:
            raise ValueError("average() needs at least one estimate")
        out = self._empty_pool()
        by_perturbation = all(e.n_perturbations > 0 for e in estimates)
        skipped: list = []
        for estimate in estimates:
            pool: EstimatePool = estimate.handle
            skipped.extend(estimate.extra.get("skipped", []))
            if by_perturbation:  # pooled sums are already perturbation-weighted
                for index, tensor in enumerate(pool.sums):
                    out.sums[index] += tensor
                out.count += pool.count
                out.mass += pool.mass
                out.halves.extend(pool.halves)  # the lists one after another
            else:
                weight = max(estimate.n_devices, 1)
                mean = self.gradient_of(estimate)
                for index, tensor in enumerate(mean):
                    out.sums[index] += tensor * weight
                out.weight += weight
            out.loss_sum += pool.loss_sum
            out.loss_n += pool.loss_n
            out.devices |= pool.devices
        result = self._estimate_from_pool(max(e.step for e in estimates), out, skipped)
        if not by_perturbation:
            result.n_perturbations = 0
        return result

