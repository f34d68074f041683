"""Work that arrives late: staleness weights, work carried past a commit, and receipts
turned into numerics work each at the step it was computed for.

:class:`CarriedWork` is a part of the :class:`~fleetsim.protocols.server.StepServer` (a
mixin): it reads ``cfg.commit``, ``ctx``, ``step``, ``env``, ``fleet``, ``engine``,
``protocol``, ``_carried`` and ``_used_staleness``, which the server sets up, and its
``client_of`` and ``perturbation_indices``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fleetsim.fleet.work import ReceiptStatus, WorkReceipt
from fleetsim.numerics_api import GradientWork


class CarriedWork:
    """Staleness: weights, carried work, receipts → numerics work."""

    def _usable_staleness(self, staleness: int) -> bool:
        """Whether work this many steps old would still be used (weight > 0, not too old)."""
        return (staleness <= self.cfg.commit.max_staleness
                and self.staleness_weight(staleness) > 0)

    def staleness_weight(self, staleness: int) -> float:
        """Weight of each perturbation of work ``staleness`` steps old
        (``protocol.commit.staleness_weighting``)."""
        commit = self.cfg.commit
        if commit.staleness_weighting == "inverse_sqrt":
            return 1.0 / math.sqrt(1.0 + staleness)
        if commit.staleness_weighting == "cutoff":
            return 1.0 if staleness <= commit.staleness_cutoff else 0.0
        return 1.0

    def carried_events(self, device_ids: np.ndarray) -> list[Any]:
        """The pending dispatch events of work carried past a commit by ``device_ids``."""
        wanted = set(np.asarray(device_ids, dtype=np.int64).tolist())
        return [ev for dev, _, ev in self._carried if dev in wanted and not ev.triggered]

    def drop_carried(self) -> None:
        """At the end of the run: withdraw work still carried (logged as dropped)."""
        for dev, step, ev in self._carried:
            if not ev.triggered:
                self.fleet.cancel(dev, step)
                self.ctx.recorder.events.add(self.env.now, dev, "dropped", step=step)
        self._carried = []

    def to_work(self, receipts: list[WorkReceipt]) -> list[GradientWork]:
        """Delivered receipts as numerics work, each at the step it was computed for.

        A receipt of step s used at step t has staleness t − s: it is evaluated at θ_s
        along step s's perturbations and weighted by :meth:`staleness_weight`; one older
        than ``protocol.commit.max_staleness`` is dropped.  Every receipt used or dropped
        is logged as a ``receipt`` or ``dropped`` event with its staleness."""
        work = []
        log = self.ctx.recorder.events
        for r in sorted(receipts, key=lambda r: (r.step, r.device_id)):
            unusable = r.status in (ReceiptStatus.REFUSED, ReceiptStatus.CANCELLED)
            if r.units_delivered <= 0 or unusable:
                continue
            staleness = self.step - int(r.step)
            if staleness > self.cfg.commit.max_staleness:
                self.fleet.mark_unused(r)
                log.add(self.env.now, r.device_id, "dropped", step=r.step,
                        units=r.units_delivered, detail="stale", staleness=staleness)
                continue
            weight = self.staleness_weight(staleness)
            client = self.client_of(r.device_id)
            n_batches = max(self.engine.batches_per_client(client), 1)
            batch = int(r.tags.get("batch_index", 0)) % n_batches
            ks = r.tags.get("perturbations")
            if ks is None:
                ks = self.perturbation_indices(r.device_id, r.units_delivered, r.step)
            log.add(self.env.now, r.device_id, "receipt", step=r.step, units=r.units_delivered,
                    detail=f"applied_step={self.step} weight={weight:.6g}", staleness=staleness)
            if weight <= 0:
                self.fleet.mark_unused(r)
                continue
            self._used_staleness.append((int(r.units_delivered), staleness))
            work.append(
                GradientWork(
                    device_id=int(r.device_id),
                    client_id=client,
                    batch_index=batch,
                    perturbations=tuple(ks),
                    step=int(r.step),
                    weight=weight,
                    pool_seeds=self.protocol.pool_seeds(self, int(r.step), int(r.device_id),
                                                        tuple(ks)),
                )
            )
        return work
