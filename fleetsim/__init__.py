"""fleetsim: a discrete-event simulator of phone fleets for federated fine-tuning with forward
gradients."""

__version__ = "0.1.0"
