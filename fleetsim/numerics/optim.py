"""The server optimiser: applies an aggregated gradient estimate to θ."""

from __future__ import annotations

import math

import torch

from fleetsim.numerics.config import ServerOptimizerConfig


class ServerOptimizer:
    """SGD, heavy-ball momentum or Adam over a list of tensors (θ owned by the engine).

    Kept here rather than ``torch.optim`` so that the state is a plain dict of
    tensors aligned with the engine's trainable-tensor order (checkpoints, tests)."""

    def __init__(self, cfg: ServerOptimizerConfig) -> None:
        self.cfg = cfg
        self.steps = 0
        self.first: list[torch.Tensor] = []
        self.second: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float) -> None:
        cfg = self.cfg
        if cfg.clip_norm is not None:
            norm = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads))
            if norm > cfg.clip_norm:
                grads = [g * (cfg.clip_norm / norm) for g in grads]
        if not self.first:
            self.first = [torch.zeros_like(p, dtype=torch.float32) for p in params]
            if cfg.name == "adam":
                self.second = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.steps += 1
        for index, (param, grad) in enumerate(zip(params, grads)):
            grad = grad.to(torch.float32)
            if cfg.name == "sgd":
                update = grad
            elif cfg.name == "momentum":
                self.first[index].mul_(cfg.momentum).add_(grad)
                update = self.first[index]
            else:
                self.first[index].mul_(cfg.beta1).add_(grad, alpha=1 - cfg.beta1)
                self.second[index].mul_(cfg.beta2).addcmul_(grad, grad, value=1 - cfg.beta2)
                first = self.first[index] / (1 - cfg.beta1**self.steps)
                second = self.second[index] / (1 - cfg.beta2**self.steps)
                update = first / (second.sqrt() + cfg.eps)
            if cfg.weight_decay:
                param.mul_(1 - lr * cfg.weight_decay)
            param.sub_((lr * update).to(param.dtype))

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "first": [t.clone() for t in self.first],
            "second": [t.clone() for t in self.second],
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.first = [t.clone() for t in state["first"]]
        self.second = [t.clone() for t in state["second"]]
