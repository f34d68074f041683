"""The payload rules: the bytes a device downloads before it computes for a step and the
bytes it uploads for its delivered units, written once.  Each protocol's
:meth:`~fleetsim.protocols.base.Protocol.download_payload` /
:meth:`~fleetsim.protocols.base.Protocol.upload_fn` picks among them; the
:class:`~fleetsim.protocols.server.StepServer` offers them as methods.  This module sits
below both (neither imports the other for them).

Sizes: fp32 parameters (4 bytes), and a (64-bit seed, fp32 scalar) record of 12 bytes per
perturbation in seed mode (:mod:`fleetsim.protocols.model_sync`, DeComFL / FedKSeed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from fleetsim.protocols.config import ProtocolConfig
from fleetsim.protocols.model_sync import SEED_RECORD_BYTES, ModelSync


class ServerView(Protocol):
    """The step server as the payload rules and the default hooks of
    :class:`~fleetsim.protocols.base.Protocol` read it: the protocol settings, the committed
    steps so far, which θ each device holds, and the trainable vector's size in bytes.
    :class:`~fleetsim.protocols.server.StepServer` is the implementation."""

    cfg: ProtocolConfig
    step: int
    sync: ModelSync

    def trainable_bytes(self) -> int:
        """4 × trainable parameters (fp32)."""
        ...


def dense_download(server: ServerView, device_ids: np.ndarray) -> np.ndarray:
    """4 × trainable parameters, or 0 for a device that already holds θ of this step;
    int64, shape ``(len(device_ids),)``."""
    return server.sync.dense_download(device_ids, server.step, server.trainable_bytes())


def seed_download(server: ServerView, device_ids: np.ndarray) -> np.ndarray:
    """12 bytes per (seed, scalar) pair of every committed step the device has not
    applied (:class:`~fleetsim.protocols.model_sync.ModelSync`); under
    ``protocol.seed_catch_up: dense_if_smaller`` the dense vector when that is smaller;
    int64, shape ``(len(device_ids),)``."""
    seeds = server.sync.seed_download(device_ids, server.step)
    if server.cfg.seed_catch_up == "dense_if_smaller":
        seeds = np.minimum(seeds, dense_download(server, device_ids))
    return seeds


def dense_upload(server: ServerView) -> Callable[[int], int]:
    """One fp32 trainable vector (4 × trainable parameters) for any units > 0."""
    dense = server.trainable_bytes()
    return lambda units: dense if units > 0 else 0


def seed_upload() -> Callable[[int], int]:
    """12 bytes (64-bit seed + fp32 scalar) per delivered perturbation."""
    return lambda units: SEED_RECORD_BYTES * int(units)
