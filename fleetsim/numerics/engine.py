"""The torch numerics engine and the builder of a run's engine.

The systems-only engine is in :mod:`fleetsim.numerics.systems_only`, model facts without
weights in :mod:`fleetsim.numerics.facts`, the data plan in :mod:`fleetsim.numerics.data`.

:class:`TorchEngine` owns θ (the PEFT subset of a :class:`TextClassifier`), the
tokenised dataset and its client partitions, the host estimators and the server
optimiser.  Protocols call it at commit time with the work devices delivered.

Host-cost levers (they change host time only, never what a phone is charged):

* perturbations of one device batch run batched (``host_batch_perturbations`` per
  call: one forward over perturbations × batch rows, :mod:`fleetsim.numerics.stacked`,
  or ``torch.vmap`` where a trainable tensor cannot run stacked), one-sided
  estimators share one base forward;
* frozen-prefix reuse: with every trainable tensor at or above layer L, the hidden
  states entering layer L depend only on the example, so they are computed once
  per example and cached for the whole run (within ``prefix_cache_max_bytes``;
  beyond it, once per batch per call); so are the outputs of layer L's frozen
  query/key/value projections (``frozen_projection_reuse``), which read only those
  states — a quarter of a BERT layer's multiply-adds that no estimator repeats;
* the ``backprop`` host estimator obtains the exact ∇L·v_k of every perturbation
  from one reverse pass.

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

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.base import (
    EvalResult,
    GradientWork,
    ModelFacts,
    NumericsEngine,
    StepEstimate,
)
from fleetsim.numerics.config import (
    DTYPE_BYTES,
    DataConfig,
    ModelConfig,
    NumericsConfig,
    PeftConfig,
    host_chunk,
)
from fleetsim.numerics.data import batch_of, plan_data
from fleetsim.numerics.datasets import load_text_dataset
from fleetsim.numerics.facts import facts_from_config, model_facts, peft_facts
from fleetsim.numerics.partition import partition, split_for_run
from fleetsim.numerics.pool import EstimatePool
from fleetsim.numerics.systems_only import SystemsOnlyEngine
from fleetsim.numerics.tokens import tokenize_cached
from fleetsim.numerics_api import POOL_SCALARS
from fleetsim.rng import stream


class TorchEngine(NumericsEngine):
    """Real forward gradients on a Hugging Face model with a PEFT subset."""

    systems_only = False

    def __init__(
        self,
        model: ModelConfig,
        peft: PeftConfig,
        data: DataConfig,
        numerics: NumericsConfig,
        n_clients: int,
        seed: int,
        base_dir: Path,
    ) -> None:
        import torch

        from fleetsim.numerics import models as model_lib
        from fleetsim.numerics.optim import ServerOptimizer
        from fleetsim.numerics.stacked import stackable

        self.model_cfg, self.peft_cfg, self.data_cfg, self.cfg = model, peft, data, numerics
        self.seed = int(seed)
        self.base_dir = Path(base_dir)
        if numerics.threads:
            torch.set_num_threads(numerics.threads)
        if numerics.device == "cuda" and not torch.cuda.is_available():
            raise FleetsimInputError(
                "numerics.device: 'cuda' requested but no CUDA device is available "
                "(allowed: cpu, cuda)"
            )
        self.device = torch.device(numerics.device)
        self.dtype = getattr(torch, numerics.dtype)
        self.timings: dict[str, float] = {}
        started = time.perf_counter()
        self.cache_dir = model_lib.default_cache_dir(numerics.cache_dir, self.base_dir)
        self.plan = plan_data(data, n_clients, self.seed, self.base_dir)
        self.resolved = model_lib.resolve_model(model, self.base_dir, self.cache_dir)
        self.tokenizer = model_lib.load_tokenizer(self.resolved)
        # only the examples this run uses are tokenised (and cached): rows of the token
        # tensors are positions in ``self.rows`` (sorted dataset indices)
        self.rows = np.union1d(
            np.union1d(self.plan.train_idx, self.plan.eval_idx), self.plan.validation_idx
        ).astype(np.int64)
        self._row_of = np.full(len(self.plan.labels), -1, dtype=np.int64)
        self._row_of[self.rows] = np.arange(len(self.rows))
        ids, mask = tokenize_cached(
            [self.plan.texts[i] for i in self.rows], self.tokenizer, model.max_seq_len,
            self.cache_dir / "tokens",
        )
        self.input_ids, self.attention_mask = ids, mask
        self.labels = torch.as_tensor(self.plan.labels[self.rows], dtype=torch.long)
        self.timings["data_s"] = time.perf_counter() - started
        started = time.perf_counter()
        num_labels = len(self.plan.label_names)
        self.model = model_lib.load_classifier(
            self.resolved, model, num_labels, self.seed, torch.float32, "cpu",
            numerics.init_head_std,
        )
        self.names = model_lib.apply_peft(self.model, peft, self.seed)
        self.model.to(device=self.device, dtype=self.dtype)
        self.model.eval()
        self.timings["model_s"] = time.perf_counter() - started
        named = dict(self.model.named_parameters())
        self.params = [named[n] for n in self.names]
        self.shapes = [p.shape for p in self.params]
        self.trainable_params = int(sum(p.numel() for p in self.params))
        self.total_params = int(sum(p.numel() for p in self.model.parameters()))
        lowest = min(self.model.layer_of(n) for n in self.names)
        self.host_chunk = host_chunk(numerics.host_batch_perturbations, data.batch_size,
                                     model.max_seq_len, numerics.device)
        # how the host batches finite-difference perturbations (run metadata)
        self.host_batching = "stacked" if stackable(
            self.model, self.names, self.model.embedding_modules()
        ) else "vmap"
        # -1: nothing worth caching below the lowest trainable layer (or reuse is off):
        # every forward starts from token ids
        self.start_layer = lowest if lowest > 0 and numerics.frozen_prefix_reuse else -1
        self.optimizer = ServerOptimizer(numerics.server_optimizer)
        self.previous_gradient: Optional[list[Any]] = None
        # θ history for stale work: step -> (θ_step, previous gradient at step), the last
        # ``_retain`` steps only (see retain_steps).
        self._retain = 0
        self._history: dict[int, tuple[dict, Optional[list[Any]]]] = {}
        self.check_indices = self._check_tensor_indices()
        self._prefix_store: Optional[Any] = None
        self._prefix_done = np.zeros(len(self.labels), dtype=bool)
        self._init_prefix_store()
        eval_idx = self.plan.eval_idx
        if numerics.eval_max_examples is not None and len(eval_idx) > numerics.eval_max_examples:
            keep = stream(self.seed, "numerics", "eval-subset").choice(
                len(eval_idx), numerics.eval_max_examples, replace=False
            )
            eval_idx = np.sort(eval_idx[keep])
        self.eval_idx = eval_idx
        self.host_perturbations = 0
        self.host_estimate_s = 0.0
        # host estimator actually run, per (step, source step) group: auto's choices
        self.estimator_calls: dict[str, int] = {}

    # ----------------------------------------------------------------- bookkeeping
    def _check_tensor_indices(self) -> list[int]:
        if self.cfg.variance_check == "all":
            return list(range(len(self.names)))
        wanted = self.cfg.variance_check_tensor
        if wanted is not None:
            for index, name in enumerate(self.names):
                if wanted in name:
                    return [index]
            raise FleetsimInputError(
                f"numerics.variance_check_tensor: no trainable tensor matches '{wanted}'; "
                f"allowed: substrings of {', '.join(self.names)}"
            )
        backbone = [i for i, n in enumerate(self.names) if n.startswith("backbone.")]
        if not backbone:
            return [0]
        lowest = min(self.model.layer_of(self.names[i]) for i in backbone)
        return [next(i for i in backbone if self.model.layer_of(self.names[i]) == lowest)]

    def _init_prefix_store(self) -> None:
        import torch

        if self.start_layer <= 0:
            return
        n, width = self.input_ids.shape
        hidden = self.model.backbone.config.hidden_size
        extra = 0
        if self.cfg.frozen_projection_reuse:
            extra = self.model.enable_projection_cache(self.start_layer, set(self.names))
        per_value = torch.finfo(self.dtype).bits // 8
        if extra and n * width * (hidden + extra) * per_value > self.cfg.prefix_cache_max_bytes:
            # recomputing three projections beats recomputing the whole prefix
            extra = self.model.enable_projection_cache(-1, set())
        if n * width * (hidden + extra) * per_value <= self.cfg.prefix_cache_max_bytes:
            self._prefix_store = torch.zeros((n, width, hidden + extra), dtype=self.dtype,
                                             device=self.device)

    def facts(self) -> ModelFacts:
        config = self.model.backbone.config
        return facts_from_config(
            self.resolved.name, config, self.total_params, self.trainable_params,
            self.model_cfg.max_seq_len, self.data_cfg.batch_size,
            DTYPE_BYTES[self.cfg.dtype], int(self.model.head.out_features),
            peft_facts(self.model, self.names, self.peft_cfg),
        )

    def num_clients(self) -> int:
        return len(self.plan.batches)

    def batches_per_client(self, client_id: int) -> int:
        return len(self.plan.batches[client_id])

    def describe(self) -> dict:
        return {
            "engine": "torch",
            "model": self.resolved.name,
            "peft": self.peft_cfg.model_dump(),
            "estimator": self.cfg.estimator,
            "estimator_rule": "auto: backprop or jvp, whichever costs fewer forwards "
            "(fleetsim.numerics.crossdevice.choose_exact)" if self.cfg.estimator == "auto"
            else "fixed",
            # what ran the jvp steps; null when no step took jvp
            "jvp_implementation": (
                ("forward_mode" if self.forward_mode else "torch.func.jvp")
                if self.estimator_calls.get("jvp") else None),
            "estimator_used": dict(self.estimator_calls),
            "cross_device_batching": bool(
                self.cfg.cross_device_batching and self.host_batching == "stacked"),
            "h": self.cfg.h,
            "host_batch_perturbations": self.host_chunk,
            "host_batching": self.host_batching,
            "frozen_prefix_layer": self.start_layer,
            "prefix_cache": self._prefix_store is not None,
            "cached_projection_width": self.model.projection_width,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_tensors": list(self.names),
            "variance_check_tensors": [self.names[i] for i in self.check_indices],
            "server_optimizer": self.cfg.server_optimizer.model_dump(),
            "discriminative": self.cfg.discriminative.model_dump(),
            "device": self.cfg.device,
            "dtype": self.cfg.dtype,
            "threads": self.cfg.threads,
            "n_train": int(len(self.plan.train_idx)),
            "n_eval": int(len(self.eval_idx)),
            "host_timings_s": dict(self.timings),
            "host_perturbations": self.host_perturbations,
            "host_estimate_s": self.host_estimate_s,
        }

    # -------------------------------------------------------------------- batches
    def batch_inputs(self, indices: np.ndarray) -> tuple[Any, Any, Any]:
        """(model input from ``start_layer``, attention mask, labels) for dataset rows."""
        import torch

        indices = self._row_of[np.asarray(indices, dtype=np.int64)]
        rows = torch.as_tensor(indices, dtype=torch.long)
        mask = self.attention_mask[rows]
        width = max(1, int(mask.sum(dim=1).max()))  # right padding: trim empty columns
        mask = mask[:, :width].to(self.device)
        labels = self.labels[rows].to(self.device)
        ids = self.input_ids[rows, :width].to(self.device)
        if self.start_layer <= 0:
            return ids, mask, labels
        with torch.inference_mode():
            if self._prefix_store is None:
                return self.model.prefix(ids, mask, self.start_layer), mask, labels
            todo = ~self._prefix_done[indices]
            if todo.any():
                missing = np.asarray(indices)[todo]
                sub = torch.as_tensor(missing, dtype=torch.long)
                sub_mask = self.attention_mask[sub]
                sub_width = max(1, int(sub_mask.sum(dim=1).max()))
                hidden = self.model.prefix(
                    self.input_ids[sub, :sub_width].to(self.device),
                    sub_mask[:, :sub_width].to(self.device), self.start_layer,
                )
                self._prefix_store[sub.to(self.device), :sub_width] = hidden
                self._prefix_done[missing] = True
            return self._prefix_store[rows.to(self.device), :width], mask, labels

    def warm_prefix_cache(self, batch_size: int = 64) -> None:
        """Fill the frozen-prefix cache for every training and evaluation example."""
        if self._prefix_store is None:
            return
        todo = self.rows[~self._prefix_done]
        for start in range(0, len(todo), batch_size):
            self.batch_inputs(todo[start : start + batch_size])

    def loss_fn(self, inputs: Any, mask: Any, labels: Any):
        """L(params) = mean cross-entropy of one batch; frozen weights closed over."""
        import torch

        model = self.model
        start = self.start_layer

        def loss(params: dict) -> Any:
            logits = torch.func.functional_call(model, params, (inputs, mask, start),
                                                strict=False)
            return torch.nn.functional.cross_entropy(logits, labels)

        return loss

    def batched_loss_fn(self, inputs: Any, mask: Any, labels: Any):
        """K losses from stacked parameter sets {name: (K, *shape)} in one forward over
        K × batch rows (:mod:`fleetsim.numerics.stacked`); None when some trainable tensor
        cannot run stacked (the estimators then use vmap)."""
        import torch

        from fleetsim.numerics.stacked import stacked_parameters

        if self.host_batching != "stacked":
            return None
        model = self.model
        start = self.start_layer

        def losses(stacked: dict) -> Any:
            with stacked_parameters(model, stacked) as count:
                logits = model(inputs, mask, start, count)
            per_row = torch.nn.functional.cross_entropy(
                logits, labels.repeat(count), reduction="none"
            )
            return per_row.view(count, -1).mean(dim=1)

        return losses

    def current_params(self) -> dict:
        return {n: p.detach() for n, p in zip(self.names, self.params)}

    # ------------------------------------------------------------------ staleness
    def retain_steps(self, max_staleness: int) -> None:
        self._retain = max(int(max_staleness), 0)

    def _snapshot(self, step: int) -> None:
        """Remember θ_step (the current θ: called before step's update is applied)."""
        if self._retain <= 0:
            return
        if step not in self._history:
            self._history[step] = (
                {n: p.detach().clone() for n, p in zip(self.names, self.params)},
                self.previous_gradient,  # replaced (never mutated) by apply()
            )
        for old in [s for s in self._history if s < step - self._retain]:
            del self._history[old]

    def _source(self, step: int, item: GradientWork) -> tuple[int, dict, Optional[list[Any]]]:
        """(source step, θ, previous gradient) a work item was computed with."""
        source = step if item.step is None else int(item.step)
        if source == step:
            return step, self.current_params(), self.previous_gradient
        if source not in self._history:
            raise ValueError(
                f"work of device {item.device_id} was computed for step {source}, but θ of that "
                f"step is not retained (estimating step {step}, retaining {self._retain} steps); "
                "the protocol must drop work older than its max_staleness"
            )
        params, previous = self._history[source]
        return source, params, previous

    # ----------------------------------------------------------- forward gradient
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

    def apply(self, estimate: StepEstimate, lr: float) -> None:
        import torch

        from fleetsim.numerics.errors import NumericalFault

        gradient = self.gradient_of(estimate)
        if not all(bool(torch.isfinite(g).all()) for g in gradient):
            if self.cfg.on_nonfinite == "stop":
                raise NumericalFault(estimate.step, -1, "aggregated estimate")
            return
        with torch.no_grad():
            self.optimizer.step([p.data for p in self.params], gradient, lr)
        self.previous_gradient = [g.detach().to("cpu") for g in gradient]

    # ----------------------------------------------------------------- evaluation
    def evaluate(self) -> EvalResult:
        """Accuracy (fraction in [0, 1]) and mean cross-entropy (nats) of θ on the held-out
        test examples, and on the validation split as ``val_accuracy``/``val_loss`` when
        ``data.validation_fraction`` made one (NaN otherwise).

        A non-finite model is never credited with an accuracy: when a trainable tensor,
        a logit or the loss is not finite, the result is ``EvalResult(nan, nan, n)``
        with ``n > 0`` (the argmax of NaN logits is an arbitrary class, so a count of
        "correct" answers would be noise).  ``n_examples == 0`` means there was nothing
        to evaluate.  Callers tell the two apart by ``n_examples``."""
        test = self._evaluate_on(self.eval_idx)
        if len(self.plan.validation_idx):
            validation = self._evaluate_on(self.plan.validation_idx)
            test.val_accuracy, test.val_loss = validation.accuracy, validation.loss
        return test

    def _evaluate_on(self, eval_idx: np.ndarray) -> EvalResult:
        """:meth:`evaluate` on the dataset indices ``eval_idx``."""
        import torch

        total_loss = 0.0
        correct = 0
        size = self.cfg.eval_batch_size
        params = self.current_params()
        n = len(eval_idx)
        if n == 0:
            return EvalResult(math.nan, math.nan, 0)
        if not all(bool(torch.isfinite(p).all()) for p in params.values()):
            return EvalResult(math.nan, math.nan, n)
        with torch.inference_mode():
            for start in range(0, n, size):
                inputs, mask, labels = self.batch_inputs(eval_idx[start : start + size])
                logits = torch.func.functional_call(
                    self.model, params, (inputs, mask, self.start_layer), strict=False
                )
                if not bool(torch.isfinite(logits).all()):
                    return EvalResult(math.nan, math.nan, n)
                total_loss += float(
                    torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
                )
                correct += int((logits.argmax(dim=-1) == labels).sum())
        if not math.isfinite(total_loss):
            return EvalResult(math.nan, math.nan, n)
        return EvalResult(correct / n, total_loss / n, n)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "params": {n: p.detach().cpu().clone() for n, p in zip(self.names, self.params)},
            "optimizer": self.optimizer.state_dict(),
            "previous_gradient": None if self.previous_gradient is None
            else [g.clone() for g in self.previous_gradient],
            "history": {
                step: ({n: t.detach().cpu().clone() for n, t in params.items()}, previous)
                for step, (params, previous) in self._history.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        import torch

        missing = set(self.names) - set(state["params"])
        if missing:
            raise ValueError(f"checkpoint lacks trainable tensors: {sorted(missing)}")
        with torch.no_grad():
            for name, param in zip(self.names, self.params):
                param.copy_(state["params"][name].to(param.device, param.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        previous = state.get("previous_gradient")
        self.previous_gradient = None if previous is None else [g.clone() for g in previous]
        self._history = {
            int(step): ({n: t.to(self.device, self.dtype) for n, t in params.items()}, prev)
            for step, (params, prev) in state.get("history", {}).items()
        }


def build_engine(
    model: ModelConfig,
    peft: PeftConfig,
    data: DataConfig,
    numerics: NumericsConfig,
    n_clients: int,
    seed: int,
    base_dir: Path,
) -> NumericsEngine:
    """The run's engine: :class:`TorchEngine`, or :class:`SystemsOnlyEngine` for engine 'none'."""
    base_dir = Path(base_dir)
    if n_clients <= 0:
        raise FleetsimInputError(f"fleet size: n_clients must be positive, got {n_clients}")
    if numerics.engine == "none":
        facts = model_facts(model, peft, data, numerics, base_dir)
        dataset = load_text_dataset(data, base_dir)
        train_idx, _ = split_for_run(data, dataset.labels, seed)
        per_client = data.examples_per_client or data.batch_size
        if data.partition == "sampled":  # every client holds the same number: no draw needed
            batches = [math.ceil(min(per_client, len(train_idx)) / data.batch_size)] * n_clients
        else:
            parts = partition(dataset.labels[train_idx], n_clients, data.partition, data.alpha,
                              seed, per_client=per_client)
            batches = [math.ceil(len(p) / data.batch_size) for p in parts]
        info = {"model": facts.name, "trainable_params": facts.trainable_params,
                "peft": json.loads(peft.model_dump_json())}
        return SystemsOnlyEngine(facts, batches, info)
    return TorchEngine(model, peft, data, numerics, n_clients, seed, base_dir)
