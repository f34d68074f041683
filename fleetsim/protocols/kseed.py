"""Zeroth-order seed-only updates in the style of FedKSeed (Qin et al., 2024).

Devices compute central-difference estimates along perturbations regenerated
from seeds and upload only (seed, scalar) pairs; the server broadcasts the same
pairs so every device can replay the update.  Differences from FedKSeed, stated
plainly: perturbations come from fleetsim's per-(step, device, k) seed streams
rather than a finite shared pool of K candidate seeds, and there is no
seed-probability weighting.  Variance control is off."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fleetsim.protocols.fwdllm import FwdLLMProtocol
from fleetsim.protocols.server import StepServer


class KSeedProtocol(FwdLLMProtocol):
    name = "kseed"

    def download_payload(self, server: StepServer, device_ids: np.ndarray) -> np.ndarray:
        """Seeds down, whatever ``protocol.download`` says: the 12-byte (seed, scalar)
        pairs of every committed step the device has not applied (``seed_download``;
        ``protocol.seed_catch_up: dense_if_smaller`` caps it at the dense vector)."""
        return server.seed_download(device_ids)

    def upload_fn(self, server: StepServer) -> Callable[[int], int]:
        """Seeds up: 12 bytes (64-bit seed + fp32 scalar) per delivered perturbation."""
        return server.seed_upload()
