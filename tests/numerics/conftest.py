"""Shared fixtures for numerics tests: tiny random-init models on a small BBC subset."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.numerics.config import ModelConfig, NumericsConfig, PeftConfig
from fleetsim.numerics.data import DataConfig


@pytest.fixture(scope="session")
def numerics_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleetsim-cache")


@pytest.fixture(scope="session")
def small_data() -> DataConfig:
    return DataConfig(name="bbc_news", batch_size=4, max_examples=120, max_eval_examples=40)


@pytest.fixture(scope="session")
def make_engine(numerics_cache: Path, small_data: DataConfig):
    from fleetsim.numerics.engine import build_engine

    def build(model: str = "tiny-bert", peft: dict | None = None, n_clients: int = 6,
              seed: int = 0, pooling: str = "mean", **numerics):
        numerics.setdefault("cache_dir", str(numerics_cache))
        # tiny models: one thread avoids OpenMP barrier stalls on a shared 2-core machine
        numerics.setdefault("threads", 1)
        return build_engine(
            ModelConfig(name_or_path=model, max_seq_len=32, pooling=pooling),
            PeftConfig(**(peft or {"method": "lora", "rank": 4, "alpha": 8})),
            small_data,
            NumericsConfig(**numerics),
            n_clients=n_clients, seed=seed, base_dir=Path("."),
        )

    return build


#: Rotten-tomatoes snippets: short, of varied length; batch 6 over 20 examples per client
#: leaves a 2-row last batch, so padding of columns and rows is exercised.
RAGGED = DataConfig(name="rotten_tomatoes", batch_size=6, max_examples=120, max_eval_examples=20)


@pytest.fixture(scope="session")
def ragged_engine(numerics_cache: Path):
    """Build an engine on :data:`RAGGED` (6 clients, 48 tokens, one thread):
    ``ragged_engine(model, pooling, peft_dict, **numerics)``."""
    from fleetsim.numerics.engine import build_engine

    def build(model: str, pooling: str, peft: dict, **numerics):
        numerics.setdefault("cache_dir", str(numerics_cache))
        numerics.setdefault("threads", 1)
        return build_engine(
            ModelConfig(name_or_path=model, max_seq_len=48, pooling=pooling),
            PeftConfig(**peft), RAGGED, NumericsConfig(**numerics), n_clients=6, seed=0,
            base_dir=Path("."),
        )

    return build
