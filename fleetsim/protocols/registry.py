"""Protocol lookup by name: built-ins plus the ``fleetsim.protocols`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from fleetsim.errors import FleetsimInputError
from fleetsim.protocols.base import Protocol
from fleetsim.protocols.fedavg import FedAvgProtocol
from fleetsim.protocols.fedsgd import FedSGDProtocol
from fleetsim.protocols.fwdllm import FwdLLMProtocol
from fleetsim.protocols.kseed import KSeedProtocol
from fleetsim.protocols.server import ServerContext, StepServer

BUILTIN_PROTOCOLS: dict[str, type[Protocol]] = {
    cls.name: cls for cls in (FwdLLMProtocol, FedSGDProtocol, FedAvgProtocol, KSeedProtocol)
}


def available_protocols() -> dict:
    found: dict = dict(BUILTIN_PROTOCOLS)
    for ep in entry_points(group="fleetsim.protocols"):
        found.setdefault(ep.name, ep)
    return found


def protocol_class(name: str) -> type[Protocol]:
    found = available_protocols()
    if name not in found:
        raise FleetsimInputError(
            f"protocol.name: unknown protocol {name!r}; allowed: {', '.join(sorted(found))}"
        )
    cls = found[name]
    return cls if isinstance(cls, type) else cls.load()


def known_protocol_class(name: str) -> type[Protocol] | None:
    """The class registered as ``name``, or None (for validators that report unknown names
    elsewhere)."""
    try:
        return protocol_class(name)
    except FleetsimInputError:
        return None


def make_server(ctx: ServerContext) -> StepServer:
    """The run's server, driving the protocol ``ctx.config.name``."""
    return StepServer(ctx, protocol_class(ctx.config.name)(ctx.config))
