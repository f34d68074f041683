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

θ and its history, the server optimiser step and checkpoint state are in
:mod:`fleetsim.numerics.theta`, the estimate dispatch (forward gradients, backprop, local
training, pooling, the variance statistic) in :mod:`fleetsim.numerics.dispatch`, the model
inputs and prefix cache in :mod:`fleetsim.numerics.inputs`: each a part of
:class:`TorchEngine`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.base import (
    EvalResult,
    ModelFacts,
    NumericsEngine,
)
from fleetsim.numerics.config import (
    DTYPE_BYTES,
    DataConfig,
    ModelConfig,
    NumericsConfig,
    PeftConfig,
    host_chunk,
)
from fleetsim.numerics.data import DataPlan, build_data_plan, plan_data
from fleetsim.numerics.dispatch import EstimateDispatch
from fleetsim.numerics.facts import facts_from_config, model_facts, peft_facts
from fleetsim.numerics.inputs import ModelInputs
from fleetsim.numerics.systems_only import SystemsOnlyEngine
from fleetsim.numerics.theta import ThetaState
from fleetsim.numerics.tokens import tokenize_cached
from fleetsim.rng import stream


class TorchEngine(ThetaState, EstimateDispatch, ModelInputs, NumericsEngine):
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
        plan: Optional[DataPlan] = None,
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
        # the run's data plan (built once by the runner), else built here
        self.plan = plan if plan is not None else plan_data(data, n_clients, self.seed,
                                                            self.base_dir)
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
        # the plan, whether built here or by the runner, and the tokenisation
        self.timings["data_s"] = time.perf_counter() - started + (
            self.plan.build_s if plan is not None else 0.0)
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
        # (theta_version, result) of the last evaluate(): reused while θ is unchanged
        self._last_evaluation: Optional[tuple[int, EvalResult]] = None
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

    # ----------------------------------------------------------------- evaluation
    def evaluate(self) -> EvalResult:
        """Accuracy (fraction in [0, 1]) and mean cross-entropy (nats) of θ on the held-out
        test examples, and on the validation split as ``val_accuracy``/``val_loss`` when
        ``data.validation_fraction`` made one (NaN otherwise).

        A non-finite model is never credited with an accuracy: when a trainable tensor,
        a logit or the loss is not finite, the result is ``EvalResult(nan, nan, n)``
        with ``n > 0`` (the argmax of NaN logits is an arbitrary class, so a count of
        "correct" answers would be noise).  ``n_examples == 0`` means there was nothing
        to evaluate.  Callers tell the two apart by ``n_examples``.

        θ unchanged since the last call (``theta_version``): that call's numbers, without
        running the model again (evaluation is a pure function of θ and the fixed splits)."""
        cached = self._last_evaluation
        if cached is not None and cached[0] == self.theta_version:
            return dataclasses.replace(cached[1])
        test = self._evaluate_on(self.eval_idx)
        if len(self.plan.validation_idx):
            validation = self._evaluate_on(self.plan.validation_idx)
            test.val_accuracy, test.val_loss = validation.accuracy, validation.loss
        self._last_evaluation = (self.theta_version, dataclasses.replace(test))
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


def build_engine(
    model: ModelConfig,
    peft: PeftConfig,
    data: DataConfig,
    numerics: NumericsConfig,
    n_clients: int,
    seed: int,
    base_dir: Path,
    plan: Optional[DataPlan] = None,
) -> NumericsEngine:
    """The run's engine: :class:`TorchEngine`, or :class:`SystemsOnlyEngine` for engine 'none'.

    ``plan``: the run's data plan (:func:`fleetsim.numerics.data.build_data_plan`, built
    once by the runner; a systems-only engine needs only its batch counts); without it the
    engine builds its own."""
    base_dir = Path(base_dir)
    if n_clients <= 0:
        raise FleetsimInputError(f"fleet size: n_clients must be positive, got {n_clients}")
    if numerics.engine == "none":
        if plan is None:
            facts = model_facts(model, peft, data, numerics, base_dir)
            plan = build_data_plan(data, n_clients, seed, base_dir, with_batches=False)
        else:
            facts = model_facts(model, peft, data, numerics, base_dir,
                                num_labels=plan.num_labels)
        info = {"model": facts.name, "trainable_params": facts.trainable_params,
                "peft": json.loads(peft.model_dump_json())}
        return SystemsOnlyEngine(facts, list(plan.batch_counts), info)
    return TorchEngine(model, peft, data, numerics, n_clients, seed, base_dir, plan)
