"""Host-side estimators of directional derivatives ∇L(θ)·v_k (see :mod:`.directional`)."""

from fleetsim.numerics.estimators.directional import (
    ESTIMATORS,
    LossFn,
    directional_derivatives,
    exact_gradient,
)

__all__ = ["ESTIMATORS", "LossFn", "directional_derivatives", "exact_gradient"]
