"""The torch side: models + PEFT, datasets, estimators, seeded perturbations.

Protocols use :class:`fleetsim.numerics.base.NumericsEngine` built by
:func:`fleetsim.numerics.engine.build_engine`; nothing here imports simpy.
Submodules are imported lazily so that systems-only code need not load torch.
"""
