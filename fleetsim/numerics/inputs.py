"""The model inputs of a :class:`~fleetsim.numerics.engine.TorchEngine`: the tokenised rows
of the run's examples, the frozen-prefix cache (hidden states, and layer L's frozen q/k/v
projections, per example) and the loss functions of one batch.

:class:`ModelInputs` is a part of the engine (a mixin): it reads ``model``, ``names``,
``start_layer``, ``host_batching``, ``input_ids``, ``attention_mask``, ``labels``, ``rows``,
``_row_of``, ``cfg``, ``device`` and ``dtype``, which the engine sets up.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ModelInputs:
    """Batches of model inputs (from ``start_layer``), the prefix cache, batch losses."""

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

