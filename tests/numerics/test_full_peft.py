"""``peft.method: full`` (Full-BP) and the trained depth the cost model charges backprop for."""

from __future__ import annotations

from fleetsim.numerics.base import GradientWork
from fleetsim.numerics.config import ModelConfig, NumericsConfig, PeftConfig
from fleetsim.numerics.facts import model_facts


def test_full_trains_every_parameter_the_forward_uses(make_engine, small_data):
    engine = make_engine(peft={"method": "full"}, estimator="backprop")
    named = dict(engine.model.named_parameters())
    pooler = [n for n in named if n.startswith("backbone.pooler.")]
    assert pooler  # tiny-bert is a BertModel with an (unused) pooler
    assert set(engine.names) == set(named) - set(pooler)
    assert any(n.startswith("backbone.embeddings.") for n in engine.names)
    assert engine.trainable_params == engine.total_params - sum(named[n].numel() for n in pooler)
    facts = model_facts(ModelConfig(name_or_path="tiny-bert", max_seq_len=32),
                        PeftConfig(method="full"), small_data, NumericsConfig())
    assert facts.trainable_params == engine.trainable_params
    assert facts.lowest_trainable_layer == 0 == engine.facts().lowest_trainable_layer
    # every trainable tensor but the unused pooler gets a gradient
    estimate = engine.backprop_gradient(0, [GradientWork(0, 0, 0, ())])
    grads = dict(zip(engine.names, engine.gradient_of(estimate)))
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items()
               if "word_embeddings" not in n and "token_type" not in n)


def test_facts_know_the_lowest_trainable_layer(small_data):
    def lowest(**peft) -> int:
        return model_facts(ModelConfig(name_or_path="tiny-bert", max_seq_len=32),
                           PeftConfig(**peft), small_data, NumericsConfig()
                           ).lowest_trainable_layer

    assert lowest(method="lora", rank=2) == 0
    assert lowest(method="adapter", rank=2, top_layers=2) == 1  # tiny-bert has 3 layers
    assert lowest(method="bitfit", layers=[2]) == 2
    assert lowest(method="head_only") == 3
