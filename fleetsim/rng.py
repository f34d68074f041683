"""Named, seeded random streams.

Every random draw in fleetsim comes from a stream named by its purpose and keyed
by stable ids (``("availability", device_id)``, ``("perturbation", step, device, k)``),
so that the order in which a policy or protocol asks for numbers never changes
any other draw.  The stream key is hashed with BLAKE2 (stable across processes,
unlike Python's ``hash``) into a ``SeedSequence`` spawn key.

This module imports neither torch nor simpy: both sides of the house use it.
"""

from __future__ import annotations

import hashlib
from typing import Union

import numpy as np

KeyPart = Union[str, int]


def _key_words(parts: tuple[KeyPart, ...]) -> tuple[int, ...]:
    text = "/".join(str(p) for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=16).digest()
    return tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))


def stream_seed(seed: int, *parts: KeyPart) -> int:
    """A 63-bit integer seed for the stream ``parts`` of run seed ``seed``.

    Used where a library wants an integer seed (torch generators)."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=_key_words(parts))
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def stream(seed: int, *parts: KeyPart) -> np.random.Generator:
    """A fresh numpy Generator for the named stream ``parts`` of run seed ``seed``."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=_key_words(parts))
    return np.random.Generator(np.random.PCG64(ss))


class RandomStreams:
    """The run's random streams: ``streams.get("noise", "compute", device_id)``.

    Each call returns a *new* generator positioned at the stream's start, so a
    caller that needs a sequence keeps the generator it got (state lives on the
    object that owns it).  ``state()`` / ``from_state`` exist for checkpoints.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def get(self, *parts: KeyPart) -> np.random.Generator:
        return stream(self.seed, *parts)

    def seed_for(self, *parts: KeyPart) -> int:
        return stream_seed(self.seed, *parts)
