"""The hand-written stacked forward equals K separate forwards, for every PEFT method."""

from __future__ import annotations

import pytest
import torch

from fleetsim.numerics.estimators import directional_derivatives
from fleetsim.numerics.stacked import stackable, stacked_parameters

PEFTS = {
    "lora": {"method": "lora", "rank": 4, "alpha": 8},
    "lora-top1": {"method": "lora", "rank": 4, "alpha": 8, "top_layers": 1},
    "bitfit": {"method": "bitfit"},
    "adapter": {"method": "adapter", "rank": 4},
    "head_only": {"method": "head_only"},
}


def _perturbed_sets(engine, count: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {
        name: p.detach() + 0.1 * torch.randn((count, *p.shape), generator=generator)
        for name, p in zip(engine.names, engine.params)
    }


@pytest.mark.parametrize("model,pooling", [("tiny-bert", "mean"), ("tiny-llama", "last")])
@pytest.mark.parametrize("peft", sorted(PEFTS))
def test_stacked_losses_equal_separate_forwards(make_engine, model, pooling, peft):
    engine = make_engine(model=model, pooling=pooling, peft=PEFTS[peft])
    assert engine.host_batching == "stacked"
    assert engine.describe()["host_batching"] == "stacked"
    inputs, mask, labels = engine.batch_inputs(engine.plan.batches[0][0])
    stacked = _perturbed_sets(engine, 5)
    with torch.inference_mode():
        batched = engine.batched_loss_fn(inputs, mask, labels)(stacked)
        loss = engine.loss_fn(inputs, mask, labels)
        separate = torch.stack([loss({n: t[k] for n, t in stacked.items()}) for k in range(5)])
    assert batched.shape == (5,)
    # the five parameter sets give five different losses, each matched to float32 rounding
    assert float(separate.std()) > 1e-4
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-6)


def test_stacked_patch_is_removed_even_on_error(make_engine):
    engine = make_engine()
    stacked = _perturbed_sets(engine, 3)
    inputs, mask, _ = engine.batch_inputs(engine.plan.batches[0][0])
    with pytest.raises(RuntimeError, match="not a multiple"):
        with stacked_parameters(engine.model, stacked):
            engine.model(inputs[:1], mask[:1], engine.start_layer)  # rows never repeated
    patched = [m for m in engine.model.modules() if "forward" in vars(m)]
    assert patched == []
    with torch.inference_mode():  # and the model computes plain forwards again
        engine.model(inputs, mask, engine.start_layer)


def test_unsupported_owner_falls_back_to_vmap(make_engine):
    engine = make_engine()
    # a trainable tensor of the embeddings would run before the rows are repeated
    assert not stackable(engine.model, ["backbone.embeddings.LayerNorm.bias"],
                         engine.model.embedding_modules())
    assert not stackable(engine.model, ["backbone.embeddings.word_embeddings.weight"])
    assert not stackable(engine.model, ["no.such.module.weight"])


@pytest.mark.parametrize("estimator", ["onesided", "central"])
def test_stacked_and_vmap_estimates_agree(make_engine, estimator):
    from fleetsim.numerics.perturbation import stack_perturbations

    engine = make_engine(model="tiny-llama", pooling="last")
    inputs, mask, labels = engine.batch_inputs(engine.plan.batches[1][0])
    params = engine.current_params()
    tangents = dict(zip(engine.names, stack_perturbations(5, 0, 0, range(6), engine.shapes)))
    loss = engine.loss_fn(inputs, mask, labels)
    via_vmap, base_vmap = directional_derivatives(loss, params, tangents, estimator, 0.01, 4)
    stacked, base_stacked = directional_derivatives(
        loss, params, tangents, estimator, 0.01, 4, engine.batched_loss_fn(inputs, mask, labels)
    )
    # finite differences divide float32 rounding by h: agreement to 1e-3 of the scale
    scale = float(via_vmap.abs().max())
    assert scale > 0
    assert float((stacked - via_vmap).abs().max()) < 1e-3 * scale + 1e-4
    assert base_stacked == pytest.approx(base_vmap, rel=1e-5)


def test_host_batch_auto_resolves_by_tokens(make_engine):
    from fleetsim.numerics.config import HOST_TOKENS_CPU, HOST_TOKENS_CUDA, host_chunk

    assert host_chunk("auto", 8, 128, "cpu") == HOST_TOKENS_CPU // (8 * 128)
    assert host_chunk("auto", 8, 64, "cpu") == 2 * host_chunk("auto", 8, 128, "cpu")
    assert host_chunk("auto", 8, 128, "cuda") == HOST_TOKENS_CUDA // (8 * 128)
    assert host_chunk("auto", 64, 512, "cpu") == 1  # never zero perturbations per call
    assert host_chunk(3, 8, 128, "cpu") == 3
    engine = make_engine()  # batch size 4, 32 tokens in these fixtures
    assert engine.host_chunk == HOST_TOKENS_CPU // (4 * 32)
    assert engine.describe()["host_batch_perturbations"] == engine.host_chunk


@pytest.mark.parametrize("model,pooling", [("tiny-bert", "mean"), ("tiny-llama", "last")])
def test_jvp_runs_on_sdpa_models(numerics_cache, small_data, model, pooling):
    from pathlib import Path

    from fleetsim.numerics.config import ModelConfig, NumericsConfig, PeftConfig
    from fleetsim.numerics.engine import TorchEngine
    from fleetsim.numerics.perturbation import stack_perturbations

    engine = TorchEngine(
        ModelConfig(name_or_path=model, max_seq_len=32, pooling=pooling,
                    attn_implementation="sdpa"),
        PeftConfig(method="lora", rank=4, alpha=8), small_data,
        NumericsConfig(threads=1, cache_dir=str(numerics_cache)), n_clients=2, seed=0,
        base_dir=Path("."),
    )
    inputs, mask, labels = engine.batch_inputs(engine.plan.batches[0][0])
    tangents = dict(zip(engine.names, stack_perturbations(1, 0, 0, range(3), engine.shapes)))
    loss, params = engine.loss_fn(inputs, mask, labels), engine.current_params()
    exact, _ = directional_derivatives(loss, params, tangents, "backprop")
    forward_mode, _ = directional_derivatives(loss, params, tangents, "jvp", chunk=2)
    torch.testing.assert_close(forward_mode, exact, rtol=1e-4, atol=1e-6)


def test_stacked_losses_in_bfloat16(make_engine):
    engine = make_engine(dtype="bfloat16")
    inputs, mask, labels = engine.batch_inputs(engine.plan.batches[0][0])
    stacked = {n: t.to(torch.bfloat16) for n, t in _perturbed_sets(engine, 3).items()}
    with torch.inference_mode():
        batched = engine.batched_loss_fn(inputs, mask, labels)(stacked)
        loss = engine.loss_fn(inputs, mask, labels)
        separate = torch.stack([loss({n: t[k] for n, t in stacked.items()}) for k in range(3)])
    assert batched.dtype == separate.dtype
    torch.testing.assert_close(batched.float(), separate.float(), rtol=2e-2, atol=2e-2)
