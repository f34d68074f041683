"""Policy lookup by name: built-ins plus the ``fleetsim.policies`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from fleetsim.errors import FleetsimInputError
from fleetsim.policies.base import AllocationPolicy, CohortSelector
from fleetsim.policies.capability import CapabilityPolicy
from fleetsim.policies.cohort import COHORT_SELECTORS
from fleetsim.policies.config import PolicyConfig
from fleetsim.policies.deadline import DeadlinePolicy
from fleetsim.policies.overcommit import OvercommitPolicy
from fleetsim.policies.uniform import UniformPolicy
from fleetsim.policies.variance_paced import VariancePacedPolicy

BUILTIN_POLICIES: dict[str, type[AllocationPolicy]] = {
    cls.name: cls
    for cls in (
        UniformPolicy, CapabilityPolicy, DeadlinePolicy, VariancePacedPolicy, OvercommitPolicy
    )
}


def available_policies() -> dict[str, type[AllocationPolicy]]:
    found = dict(BUILTIN_POLICIES)
    for ep in entry_points(group="fleetsim.policies"):
        found.setdefault(ep.name, ep)  # loaded lazily on use
    return found


def policy_class(name: str) -> type[AllocationPolicy]:
    found = available_policies()
    if name not in found:
        raise FleetsimInputError(
            f"policy.name: unknown policy {name!r}; allowed: {', '.join(sorted(found))}"
        )
    cls = found[name]
    return cls if isinstance(cls, type) else cls.load()


def known_policy_class(name: str) -> type[AllocationPolicy] | None:
    """The class registered as ``name``, or None (validators report unknown names
    elsewhere)."""
    try:
        return policy_class(name)
    except FleetsimInputError:
        return None


def make_policy(config: PolicyConfig) -> AllocationPolicy:
    return policy_class(config.name)(config)


def make_cohort_selector(config: PolicyConfig) -> CohortSelector:
    return COHORT_SELECTORS[config.cohort]()
