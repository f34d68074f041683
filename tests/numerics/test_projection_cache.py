"""Cached frozen projections change host time only, never a number.

With every trainable tensor in the top layer, the hidden states entering it are cached
(frozen-prefix reuse) and so are its frozen query/key/value projections
(``numerics.frozen_projection_reuse``).  Each estimator, the evaluation and the applied
steps must equal the engine that recomputes those projections, float32 to 1e-5."""

from __future__ import annotations

import pytest
import torch

from fleetsim.numerics.base import GradientWork

TOL = 1e-5
SETTINGS = {
    # (model, pooling, peft, expected cached width as a function of the config)
    "bert-lora-qv": ("tiny-bert", "mean", {"method": "lora", "rank": 4, "alpha": 8,
                                          "target_modules": ["query", "value"],
                                          "top_layers": 1},
                     lambda c: 3 * c.hidden_size),
    "bert-adapter": ("tiny-bert", "cls", {"method": "adapter", "rank": 4, "top_layers": 1},
                     lambda c: 3 * c.hidden_size),
    # BitFit trains the query/key/value biases themselves: nothing may be cached
    "bert-bitfit": ("tiny-bert", "mean", {"method": "bitfit", "top_layers": 1},
                    lambda c: 0),
    "llama-lora": ("tiny-llama", "last", {"method": "lora", "rank": 4, "alpha": 8,
                                          "top_layers": 1},
                   lambda c: c.hidden_size + 2 * c.num_key_value_heads
                   * (c.hidden_size // c.num_attention_heads)),
}


@pytest.fixture(scope="module")
def engine_for(ragged_engine):
    def build(setting: str, **numerics):
        model, pooling, peft, _ = SETTINGS[setting]
        return ragged_engine(model, pooling, peft, **numerics)

    return build


WORK = [GradientWork(device_id=c, client_id=c, batch_index=b, perturbations=tuple(range(v)))
        for c, b, v in [(0, 3, 3), (1, 1, 1), (2, 3, 5), (4, 2, 4)]]


def _steps(engine, estimator: str):
    engine.cfg = engine.cfg.model_copy(update={"estimator": estimator})
    out = []
    for step in range(2):
        estimate = engine.forward_gradient(step, WORK)
        out.append((estimate.loss, [g.clone() for g in engine.gradient_of(estimate)]))
        engine.apply(estimate, lr=0.5)
    return out, engine.evaluate()


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("estimator", ["backprop", "jvp", "onesided", "central"])
def test_cached_projections_change_nothing(engine_for, setting, estimator):
    cached = engine_for(setting, h=0.1)
    plain = engine_for(setting, h=0.1, frozen_projection_reuse=False)
    config = cached.model.backbone.config
    assert cached.describe()["cached_projection_width"] == SETTINGS[setting][3](config)
    assert plain.describe()["cached_projection_width"] == 0
    assert cached.start_layer == plain.start_layer == config.num_hidden_layers - 1
    (a_steps, a_eval), (b_steps, b_eval) = _steps(cached, estimator), _steps(plain, estimator)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(a_steps, b_steps):
        assert loss_a == pytest.approx(loss_b, abs=TOL)
        for x, y in zip(grads_a, grads_b):
            torch.testing.assert_close(x, y, rtol=TOL, atol=TOL)
    assert a_eval.accuracy == b_eval.accuracy
    assert a_eval.loss == pytest.approx(b_eval.loss, abs=TOL)


def test_budget_drops_projections_before_the_prefix(engine_for):
    probe = engine_for("bert-lora-qv")
    n, width = probe.input_ids.shape
    hidden = probe.model.backbone.config.hidden_size
    # room for the hidden states alone: the projections go, the prefix cache stays
    tight = engine_for("bert-lora-qv", prefix_cache_max_bytes=n * width * hidden * 4)
    assert tight.describe()["cached_projection_width"] == 0
    assert tight.describe()["prefix_cache"] is True
    # no room at all: the prefix runs on every call and the layer computes its own
    # projections; the numbers stay those of the cached engines
    none = engine_for("bert-lora-qv", prefix_cache_max_bytes=0)
    assert none.describe()["prefix_cache"] is False
    assert none.describe()["cached_projection_width"] == 0
    (a, _), (b, _), (c, _) = (_steps(none, "backprop"), _steps(tight, "backprop"),
                              _steps(probe, "backprop"))
    assert probe.describe()["cached_projection_width"] == 3 * hidden
    for (_, grads_a), (_, grads_b), (_, grads_c) in zip(a, b, c):
        for x, y, z in zip(grads_a, grads_b, grads_c):
            torch.testing.assert_close(x, y, rtol=TOL, atol=TOL)
            torch.testing.assert_close(x, z, rtol=TOL, atol=TOL)


def test_trainable_input_norm_disables_the_cache(engine_for):
    engine = engine_for("llama-lora")
    layer = engine.start_layer
    model = engine.model
    # a trainable norm before the projections makes their input depend on θ
    assert model.enable_projection_cache(
        layer, {f"backbone.layers.{layer}.input_layernorm.weight"}) == 0
    assert model.enable_projection_cache(layer, set(engine.names)) > 0
    assert model.enable_projection_cache(model.n_layers, set()) == 0  # head only: none


def test_wrong_layer_input_width_is_refused(engine_for):
    engine = engine_for("bert-lora-qv")
    inputs, mask, _ = engine.batch_inputs(engine.plan.train_idx[:4])
    hidden = engine.model.backbone.config.hidden_size
    assert inputs.shape[-1] == 4 * hidden
    with pytest.raises(RuntimeError, match="expected"):
        engine.model(inputs[..., : 2 * hidden], mask, engine.start_layer)
    with pytest.raises(RuntimeError, match="expected"):  # not the cached layer
        engine.model(inputs, mask, engine.start_layer - 1)
