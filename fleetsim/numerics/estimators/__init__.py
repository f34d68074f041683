"""Host-side estimators of directional derivatives ∇L(θ)·v_k (see :mod:`.directional`)."""

from fleetsim.numerics.estimators.directional import (
    ESTIMATORS,
    BatchedLossFn,
    LossFn,
    directional_derivatives,
    exact_gradient,
)

__all__ = ["ESTIMATORS", "BatchedLossFn", "LossFn", "directional_derivatives", "exact_gradient"]
