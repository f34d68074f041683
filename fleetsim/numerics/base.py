"""The server–numerics contract, as the numerics package names it.

Defined once in :mod:`fleetsim.numerics_api` (torch-free, on the ground floor);
re-exported here for the engines that implement it.
"""

from fleetsim.numerics_api import (
    EvalResult,
    GradientWork,
    ModelFacts,
    NumericsEngine,
    StepEstimate,
)

__all__ = ["EvalResult", "GradientWork", "ModelFacts", "NumericsEngine", "StepEstimate"]
