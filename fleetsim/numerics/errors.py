"""Numerical failures of the engine (not user-input errors)."""

from __future__ import annotations


class NumericalFault(RuntimeError):
    """A loss or gradient estimate was not finite and ``on_nonfinite`` is 'stop'."""

    def __init__(self, step: int, device_id: int, detail: str) -> None:
        super().__init__(f"non-finite {detail} at step {step} on device {device_id}")
        self.step = step
        self.device_id = device_id
        self.detail = detail
