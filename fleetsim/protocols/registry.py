"""Protocol lookup by name: built-ins plus the ``fleetsim.protocols`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from fleetsim.errors import FleetsimInputError
from fleetsim.protocols.base import Protocol
from fleetsim.protocols.config import ProtocolConfig
from fleetsim.protocols.fedavg import FedAdapterProtocol, FedAvgProtocol
from fleetsim.protocols.fedsgd import (
    AdapterBPProtocol,
    BitFitBPProtocol,
    FedSGDProtocol,
    FullBPProtocol,
)
from fleetsim.protocols.fwdllm import FwdLLMProtocol
from fleetsim.protocols.kseed import KSeedProtocol
from fleetsim.protocols.server import ServerContext, StepServer

BUILTIN_PROTOCOLS: dict[str, type[Protocol]] = {
    cls.name: cls for cls in (
        FwdLLMProtocol, FedSGDProtocol, FedAvgProtocol, KSeedProtocol,
        # FwdLLM's Fig. 10 baselines: a protocol with its PEFT fixed
        AdapterBPProtocol, BitFitBPProtocol, FullBPProtocol, FedAdapterProtocol,
    )
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


def method_label(config: ProtocolConfig, server_optimizer: str) -> str:
    """The name of the method a run's ``protocol`` section configures, as its paper gives
    it (``"FwdLLM"``, ``"FedAdam"``, ``"FwdLLM (seed-only upload)"``, ``"Adapter-BP"``;
    :meth:`Protocol.method_label`); the registered name for an unknown protocol.
    ``server_optimizer``: ``numerics.server_optimizer.name``."""
    cls = known_protocol_class(config.name)
    return config.name if cls is None else cls.method_label(config, server_optimizer)


def make_server(ctx: ServerContext) -> StepServer:
    """The run's server, driving the protocol ``ctx.config.name``."""
    return StepServer(ctx, protocol_class(ctx.config.name)(ctx.config))
