"""Zeroth-order seed-only updates in the style of FedKSeed (Qin et al., 2024).

Devices compute central-difference estimates along perturbations regenerated
from seeds and upload only (seed, scalar) pairs; the server broadcasts the same
pairs so every device can replay the update.  Differences from FedKSeed, stated
plainly: perturbations come from fleetsim's per-(step, device, k) seed streams
rather than a finite shared pool of K candidate seeds, and there is no
seed-probability weighting.  Variance control is off."""

from __future__ import annotations

from fleetsim.protocols.fwdllm import FwdLLMProtocol


class KSeedProtocol(FwdLLMProtocol):
    name = "kseed"

    def upload_fn(self):
        from fleetsim.protocols.base import SEED_RECORD_BYTES

        return lambda units: SEED_RECORD_BYTES * int(units)

    def download_bytes(self) -> int:
        from fleetsim.protocols.base import SEED_RECORD_BYTES

        return SEED_RECORD_BYTES * max(self._last_step_units, 0)
