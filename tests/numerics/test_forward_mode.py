"""The hand-written forward-mode pass gives autograd's directional derivatives.

Each case builds a tiny random-init BERT classifier, draws random values for every
trainable tensor (LoRA B starts at zero in peft, which would hide every term through
it), and compares :func:`fleetsim.numerics.forward_mode.cohort_jvp` with ⟨∇L_i, v_ij⟩
from ``torch.autograd`` on the model's own forward, device by device: ragged lengths
(right padding), padding rows of weight 0, several perturbations per device (the
primal shared by a device's sets) and a device with one."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, ElectraConfig

from fleetsim.numerics.config import PeftConfig
from fleetsim.numerics.crossdevice import EXACT_COST, Cohort, choose_exact, cohort_directional
from fleetsim.numerics.forward_mode import cohort_jvp, plan_for
from fleetsim.numerics.models import TextClassifier, apply_peft, tiny_config

ROWS = 3  # rows per device batch
PERTURBATIONS = [2, 1, 3]  # per device


def _classifier(peft: dict, pooling: str = "mean", act: str = "gelu",
                electra: bool = False) -> tuple:
    if electra:  # embeddings narrower than the layers: ELECTRA projects them up
        config = ElectraConfig(vocab_size=120, embedding_size=16, hidden_size=32,
                               num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    else:
        config = tiny_config("tiny-bert", vocab_size=120)
    config.hidden_act = act
    torch.manual_seed(0)
    model = TextClassifier(AutoModel.from_config(config, attn_implementation="eager"),
                           "bert", num_labels=3, pooling=pooling)
    with torch.no_grad():  # frozen scales and biases away from their 1 / 0 init
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.Linear)) and (
                    module.bias is not None):
                module.bias.normal_(0.0, 0.1)
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
    names = apply_peft(model, PeftConfig(**peft), seed=0)
    model.eval()
    return model, names


def _start(model: TextClassifier, names: list[str]) -> int:
    """As the engine: -1 (from token ids) when layer 0 is trainable."""
    first = min(model.layer_of(n) for n in names)
    return -1 if first == 0 else first


def _batch(devices: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (devices * ROWS, 9), generator=gen)
    lengths = torch.randint(2, 10, (devices * ROWS,), generator=gen)
    mask = (torch.arange(9)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, 3, (devices * ROWS,), generator=gen)
    weights = torch.ones(devices * ROWS)
    weights[ROWS - 1] = 0.0  # device 0's last row is padding
    return ids * mask, mask, labels, weights


def _reference(model, start, params, inputs, mask, labels, weights, tangents, owners):
    """d_j = ⟨∇L_owner(j), v_j⟩ by autograd, device by device."""
    out = []
    for j, device in enumerate(owners):
        rows = slice(device * ROWS, (device + 1) * ROWS)
        leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        logits = torch.func.functional_call(
            model, leaves, (inputs[rows], mask[rows], start), strict=False)
        per_row = torch.nn.functional.cross_entropy(logits, labels[rows], reduction="none")
        loss = (per_row * weights[rows]).sum() / weights[rows].sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
        out.append(sum((g * tangents[n][j]).sum() for g, n in zip(grads, leaves)))
    return torch.stack(out)


CASES = {
    "lora-qv-all-layers": ({"method": "lora", "rank": 2, "alpha": 4}, "mean", "gelu"),
    "lora-every-linear-top2": ({"method": "lora", "rank": 2, "alpha": 4, "top_layers": 2,
                                "target_modules": ["query", "key", "value", "dense"]},
                               "mean", "gelu"),
    "lora-cls-relu": ({"method": "lora", "rank": 3, "alpha": 3, "top_layers": 1},
                      "cls", "relu"),
    "lora-tanh-gelu-no-head": ({"method": "lora", "rank": 2, "alpha": 4, "top_layers": 1,
                                "train_head": False}, "mean", "gelu_new"),
    "head-only": ({"method": "head_only"}, "mean", "gelu"),
    "electra-projected-embeddings": ({"method": "lora", "rank": 2, "alpha": 4}, "mean",
                                     "gelu"),
}


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_mode_equals_autograd(case, cached):
    peft, pooling, act = CASES[case]
    model, names = _classifier(peft, pooling, act, electra=case.startswith("electra"))
    start = _start(model, names)
    if cached and not model.enable_projection_cache(start, set(names)):
        pytest.skip("no frozen projection to cache in this layer")
    plan = plan_for(model, names, start)
    assert plan is not None
    assert bool(plan.cached) is cached
    gen = torch.Generator().manual_seed(2)
    params = {n: torch.randn(p.shape, generator=gen) * 0.3
              for n, p in model.named_parameters() if n in names}
    owners = [d for d, v in enumerate(PERTURBATIONS) for _ in range(v)]
    tangents = {n: torch.randn((len(owners), *p.shape), generator=gen)
                for n, p in params.items()}
    ids, mask, labels, weights = _batch(len(PERTURBATIONS))
    with torch.no_grad():
        inputs = ids if start < 0 else model.prefix(ids, mask, start)
    expected = _reference(model, start, params, inputs, mask, labels, weights, tangents,
                          owners)
    with torch.inference_mode():
        d, base = cohort_jvp(plan, model, params, inputs, mask, labels, weights, ROWS,
                             tangents, torch.tensor(owners))
        # v = 1 per device: the sets are the devices themselves (no expansion)
        first = {n: t[[0, 2, 3]] for n, t in tangents.items()}
        d1, _ = cohort_jvp(plan, model, params, inputs, mask, labels, weights, ROWS,
                           first, None)
    scale = float(expected.abs().max())
    torch.testing.assert_close(d, expected, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(d1, expected[[0, 2, 3]], rtol=1e-4, atol=1e-5 * scale)
    for device in range(len(PERTURBATIONS)):
        rows = slice(device * ROWS, (device + 1) * ROWS)
        with torch.no_grad():
            logits = torch.func.functional_call(model, params, (inputs[rows], mask[rows], start),
                                                strict=False)
        per_row = torch.nn.functional.cross_entropy(logits, labels[rows], reduction="none")
        loss = (per_row * weights[rows]).sum() / weights[rows].sum()
        assert float(base[device]) == pytest.approx(float(loss), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("peft", [
    {"method": "bitfit"},
    {"method": "adapter", "top_layers": 1},
])
def test_other_peft_methods_keep_torch_func(peft):
    model, names = _classifier(peft)
    assert plan_for(model, names, _start(model, names)) is None


def test_llama_and_training_mode_keep_torch_func():
    config = tiny_config("tiny-llama", vocab_size=120)
    llama = TextClassifier(AutoModel.from_config(config, attn_implementation="eager"),
                           "llama", num_labels=3, pooling="last")
    names = apply_peft(llama, PeftConfig(method="lora", rank=2, alpha=4), seed=0)
    assert plan_for(llama.eval(), names, 0) is None
    model, names = _classifier({"method": "lora", "rank": 2, "alpha": 4})
    assert plan_for(model, names, 0) is not None
    assert plan_for(model.train(), names, 0) is None  # dropout would change the function


def test_choose_exact_uses_forward_mode_costs():
    cost = EXACT_COST["cpu"]
    for counts in ([1] * 10, [2] * 10, [1, 0, 2], [8] * 4):
        devices = sum(1 for v in counts if v)
        fwd = cost["forward_mode_primal"] * devices + cost["forward_mode_tangent"] * sum(counts)
        expect = "jvp" if fwd < cost["backprop"] * devices else "backprop"
        assert choose_exact(counts, "cpu", forward_mode=True) == expect
    assert choose_exact([1] * 10, "cpu", forward_mode=True) == "jvp"
    assert choose_exact([1] * 10, "cpu", forward_mode=False) == "backprop"
    assert choose_exact([8] * 10, "cpu", forward_mode=True) == "backprop"


def test_every_device_needs_a_perturbation():
    model, names = _classifier({"method": "lora", "rank": 2, "alpha": 4})
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    one = {n: torch.zeros((1, *p.shape)) for n, p in params.items()}
    none = {n: torch.zeros((0, *p.shape)) for n, p in params.items()}
    cohort = Cohort.of([[0], [1]], lambda rows: (_ for _ in ()).throw(AssertionError))
    with pytest.raises(ValueError, match="every device needs a perturbation"):
        cohort_directional(model, -1, params, cohort, [one, none], "jvp", 1e-3, 4,
                           torch.no_grad)
