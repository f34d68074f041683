"""Memory model: peak bytes of a job on a phone, charged for what the PEFT needs.

A job holds the model's weights, the activations its kind of work keeps alive, and the
state of the trainable parameters.  With ``b`` batch, ``s`` sequence length, ``h``
hidden size, ``I`` feed-forward width, ``heads`` attention heads, ``a`` activation bytes
(4 for an fp32 model, else 2: fp16/int8/int4 runtimes compute in 16 bits), ``T``
trainable parameters, ``C`` classifier outputs::

    weights     = n_params * w * (1 + RUNTIME_OVERHEAD)      (w: bytes per stored weight)
    transient   = b * s * a * t_inf                          (live tensors of one frozen
                                                              layer's forward, below)
    prefix      = b * s * h * a   when the lowest trainable layer is above layer 0 (the
                                  frozen prefix's output, kept across a task's forwards)
    master      = T * 4           when weights are not fp32 (fp32 trainable copy), else 0

    inference                 = weights + transient + b * C * 4
    forward_gradient central  = weights + transient + prefix + b * C * 4 + 2 * T * 4
                                + master
      (perturbed inference, central or one-sided differences: two / one forwards at
      θ ± h·v run one after the other; the perturbation v and the estimate
      accumulator are fp32 vectors of the trainable size)
    forward_gradient jvp      = weights + 2 * transient + prefix + b * C * 4 + 2 * T * 4
                                + master
      (forward-mode AD: a tangent next to each live activation of the layers at and
      above the lowest trainable one; below it tangents are zero and not kept; with
      only the head trainable the tangent lives in the head alone: 1 * transient)
    backprop                  = weights + backward_peak + master
      backward_peak = max(forward walk, backward walk, all gradients):
        forward walk : saved(layers below the top) + transient       (the top layer's
                       forward on top of everything saved below it)
        backward walk: saved(all) + grads(head) + b * s * a * (2 I + h) at the head,
                       then for each layer k from the top down to the lowest trainable
                       one saved(embeddings, layers <= k) + grads(layers >= k, head)
                       + b * s * a * (2 I + h)
        all gradients: T * 4 (fp32), reached when the walk ends

``saved(l)`` is what autograd keeps for the backward pass in layer ``l``.  It is
computed by following the layer's operations (:func:`saved_elements_per_token`): an
operation saves an input only when the backward pass needs it for a gradient that is
required (PyTorch's autograd saves ``x`` for ``y = x Wᵀ`` only when ``W`` trains, ``k``
for ``q kᵀ`` only when ``q`` needs a gradient, …), and a tensor needs a gradient only at
or above the lowest trainable layer.  So a top-layer LoRA keeps its one layer's
activations (plus the head's), not every layer's, and layers below the lowest trainable
one cost only the transient peak of their forward.  Per layer and token (elements; a
layer whose input needs a gradient, weights frozen — the "pass-through" layer; BERT:
q, k, v, softmax output, two LayerNorm inputs and statistics, GELU input; LLaMA: norm
inputs and rstd, rotary q, the repeated k and v, softmax output, SiLU input and output,
up projection)::

    bert pass-through   = 5 h + I + heads * s + 4
    llama pass-through  = 5 h + 3 I + heads * s + 2     (plus 2 × head_dim of rotary
                                                         cos/sin once per model)
    LoRA layer          += width of each distinct input the adapted projections read
                           + rank per adapted projection
    adapter layer       += h + 2 * width                (base output, bottleneck in/out)
    BitFit layer        += 0                            (bias gradients need no input)
    full layer          += the input of every linear (3 h + I: the attention input, its
                           output, the feed-forward input and intermediate)
                           + llama's normalised hidden of each RMSNorm (2 h)

The lowest trainable layer saves less (what only feeds frozen weights there has no
gradient: for a q/v LoRA, ``q kᵀ`` keeps ``k`` but not ``q``).  Above the layers the
classifier saves the pooled vector and the log-softmax (``b (h + C)``) and LLaMA's final
RMSNorm input when the layers below need a gradient.

Checked against PyTorch on the CPU (``tests/numerics/test_memory_measured.py``):
``saved`` against the bytes autograd's saved-tensor hooks see, and the backprop peak
against the profiler's allocator peak, on all-MiniLM-L6-v2 and SmolLM2-135M for a
top-layer LoRA, LoRA in every layer, BitFit, adapters and full fine-tuning (within 15 %;
the saved bytes agree to a fraction of a percent).

Constants and their sources:

* ``RUNTIME_OVERHEAD`` = 0.09: the median ratio of measured llama.cpp INT4 peak memory
  to INT4 weight bytes over the 27 TinyLLMLeaderBoard LLMs (the ``memory`` field, GB, of
  UbiquitousLearning/TinyLLMLeaderBoard@087631aa ``data.json``, in
  ``shared/device_data/tinyllm_leaderboard_llamacpp_phones``; e.g. LLaMA 7B: 4.135 GB
  measured over 6.738e9 × 18/32 B = 3.790 GB of weights = 1.091).  The FwdLLM paper's
  LLaMA-7B figures (FP16 15.6 GB, INT8 7.9 GB, INT4 4.0 GB) check the result; they are
  not an input.
* ``BYTES_PER_WEIGHT``: GGUF q8_0 / q4_0 store one fp16 scale per 32 weights
  (34/32 and 18/32 bytes per weight); fp16/fp32 are 2 and 4 bytes.
* ``t_inf`` (:data:`INFERENCE_TRANSIENT`): the live tensors at the peak of one layer's
  forward without autograd, per token; bert ``3 h + 2 I + heads * s`` (the layer input,
  the attention output and its LayerNorm, the feed-forward intermediate and its GELU, and
  one attention-score row), llama ``2 h + 4 I + heads * s`` (the gate, up, SiLU and
  product tensors of the gated feed-forward); read off PyTorch's allocator peak of
  Hugging Face's eager layers (same test file): all-MiniLM-L6-v2 exactly at (b, s) =
  (2, 16), (4, 32), (4, 64); SmolLM2-135M within +4 % at (2, 32), (1, 64) (its measured
  peak is 12 h + 12 s per token there; the formula is an upper envelope).
* the backward transient ``2 I + h`` per token: the gradients of the feed-forward
  intermediate and of its activation plus the gradient of the hidden state, the largest
  set alive while one layer's backward runs (same measurements; within one ``h`` of the
  measured peaks).
* Classifier head, not an LM head: fleetsim fine-tunes a pooled linear classifier
  (``numerics/models.py`` ``TextClassifier``), so the output is ``b × C`` logits, not
  ``b × s × vocab``.
* fp32 trainable state: phones run local SGD (FedAvg) or only compute a gradient
  (FedSGD) or an estimate (FwdLLM): no optimiser moments on the phone (the server's
  optimiser lives on the server).

Not modelled: dropout masks (fleetsim runs in eval mode, as Korthikanti et al. 2022's
count would otherwise add), the KV cache (no generation), allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetsim.errors import FleetsimInputError
from fleetsim.workload import JOB_KINDS, PEFT_METHODS, ModelFacts, PeftFacts

#: effective bytes per weight: int8/int4 carry one fp16 scale per 32 weights (GGUF q8_0/q4_0)
BYTES_PER_WEIGHT = {1: 34 / 32, 2: 2.0, 4: 4.0}
INT4_BYTES_PER_WEIGHT = 18 / 32
#: median llama.cpp INT4 peak / INT4 weight bytes, 27 TinyLLMLeaderBoard LLMs (module doc)
RUNTIME_OVERHEAD = 0.09
#: bytes of one fp32 value: trainable master copy, gradients, perturbation, estimate
FP32 = 4.0
#: how a phone computes a forward-gradient unit (``protocol.phone_estimator``)
PHONE_ESTIMATORS = ("central", "onesided", "jvp")
FAMILIES = ("bert", "llama")


def weight_bytes_per_param(dtype_bytes: float) -> float:
    """Bytes per stored weight for ``ModelFacts.dtype_bytes`` (0.5 = INT4).  Raises
    FleetsimInputError for another value."""
    if dtype_bytes == 0.5:
        return INT4_BYTES_PER_WEIGHT
    if dtype_bytes in BYTES_PER_WEIGHT:
        return BYTES_PER_WEIGHT[int(dtype_bytes)]
    raise FleetsimInputError(
        f"model dtype_bytes: {dtype_bytes!r} is not supported (allowed: 0.5, 1, 2, 4)"
    )


def activation_bytes(facts: ModelFacts) -> float:
    """Bytes per activation element: 4 for an fp32 model, else 2 (16-bit compute)."""
    return 4.0 if facts.dtype_bytes == 4 else 2.0


def inference_transient_per_token(facts: ModelFacts) -> float:
    """``t_inf``: elements per token alive at the peak of one frozen layer's forward
    (module docstring: constants and their sources)."""
    h, inter, heads, s = _shape(facts)
    if facts.family == "llama":
        return 2.0 * h + 4.0 * inter + heads * s
    return 3.0 * h + 2.0 * inter + heads * s


def backward_transient_per_token(facts: ModelFacts) -> float:
    """Elements per token of activation gradients alive while one layer's backward runs:
    ``2 I + h`` (module docstring)."""
    h, inter, _, _ = _shape(facts)
    return 2.0 * inter + h


def _shape(facts: ModelFacts) -> tuple[int, int, int, int]:
    if min(facts.hidden_size, facts.intermediate_size, facts.n_heads) <= 0:
        raise FleetsimInputError(
            f"model {facts.name!r}: the memory model needs hidden_size, intermediate_size "
            f"and n_heads (got {facts.hidden_size}, {facts.intermediate_size}, "
            f"{facts.n_heads})")
    return facts.hidden_size, facts.intermediate_size, facts.n_heads, facts.seq_len


# -- saved activations ---------------------------------------------------------------------
@dataclass
class _Layer:
    """Follows one layer's operations: which tensors need a gradient, which are saved."""

    full: bool  # every weight of the layer trains
    bitfit: bool  # biases train
    lora: frozenset[str]  # adapted projections
    adapter: bool
    rank: int
    rg: dict[str, bool] = field(default_factory=dict)  # tensor -> needs a gradient
    saved: dict[str, float] = field(default_factory=dict)  # tensor -> elements per token
    width: dict[str, float] = field(default_factory=dict)  # tensor -> elements per token
    projections: set[str] = field(default_factory=set)  # the layer's linear modules

    def linear(self, module: str, x: str, out: str, has_bias: bool) -> None:
        trains = self.full or (self.bitfit and has_bias)
        lora = module in self.lora
        self.projections.add(module)
        if self.full:
            self.saved[x] = self.width[x]  # the weight gradient needs the input
        if lora:
            self.saved[x] = self.width[x]  # lora_A's weight gradient needs the input
            self.saved[out + ".lora_mid"] = self.rank  # lora_B's input
        self.set(out, self.rg[x] or trains or lora)

    def set(self, name: str, rg: bool, width: float | None = None) -> None:
        self.rg[name] = rg
        if width is not None:
            self.width[name] = width

    def matmul(self, a: str, b: str, out: str) -> None:
        if self.rg[b]:
            self.saved[a] = self.width[a]
        if self.rg[a]:
            self.saved[b] = self.width[b]
        self.set(out, self.rg[a] or self.rg[b])

    def keep_if_grad(self, x: str, out: str, keep: str) -> None:
        """softmax (keeps its output) and GELU / SiLU (keep their input)."""
        if self.rg[x]:
            self.saved[keep] = self.width[keep]
        self.set(out, self.rg[x])

    def mul(self, a: str, b: str, out: str) -> None:
        self.matmul(a, b, out)  # elementwise: the same saving rule

    def add(self, a: str, b: str, out: str) -> None:
        self.set(out, self.rg[a] or self.rg[b])

    def layernorm(self, x: str, out: str) -> None:
        trains = self.full or self.bitfit  # weight and bias (BitFit: the bias)
        if self.rg[x] or trains:
            self.saved[x] = self.width[x]
            self.saved[out + ".stats"] = 2  # mean and rstd per token
        self.set(out, self.rg[x] or trains)

    def rmsnorm(self, x: str, out: str) -> None:
        if self.rg[x]:
            self.saved[x] = self.width[x]
            self.saved[out + ".rstd"] = 1
        if self.full:
            self.saved[out + ".normed"] = self.width[x]  # the weight gradient's input
        self.set(out, self.rg[x] or self.full)

    def bottleneck(self, y: str, out: str) -> None:
        """Adapter y + up(gelu(down(y))) with trainable down/up."""
        if self.adapter:
            self.saved[y] = self.width[y]
            self.saved[out + ".down"] = self.rank  # GELU input
            self.saved[out + ".gelu"] = self.rank  # up's input
            self.set(out, True)
        else:
            self.set(out, self.rg[y])


def _bert_layer(layer: _Layer, h: int, inter: int, heads: int, s: int) -> None:
    """Hugging Face BERT layer, eager attention, eval mode (no dropout)."""
    w = layer.width
    w.update(q=h, k=h, v=h, scores=heads * s, probs=heads * s, ctx=h, ao=h, r1=h, h1=h,
             i=inter, g=inter, o=h, oa=h, r2=h, out=h)
    layer.linear("attention.self.query", "x", "q", True)
    layer.linear("attention.self.key", "x", "k", True)
    layer.linear("attention.self.value", "x", "v", True)
    layer.matmul("q", "k", "scores")
    layer.keep_if_grad("scores", "probs", "probs")
    layer.matmul("probs", "v", "ctx")
    layer.linear("attention.output.dense", "ctx", "ao", True)
    layer.add("ao", "x", "r1")
    layer.layernorm("r1", "h1")
    layer.linear("intermediate.dense", "h1", "i", True)
    layer.keep_if_grad("i", "g", "i")
    layer.linear("output.dense", "g", "o", True)
    layer.bottleneck("o", "oa")
    layer.add("oa", "h1", "r2")
    layer.layernorm("r2", "out")


def _llama_layer(layer: _Layer, h: int, inter: int, heads: int, kv: int, s: int) -> None:
    """Hugging Face LLaMA decoder layer, eager attention (repeat_kv copies k and v to
    every head when kv < heads), no biases."""
    w = layer.width
    head_dim = h // heads
    kv_width = kv * head_dim
    w.update(n1=h, q=h, k=kv_width, v=kv_width, qr=h, kr=kv_width, scores=heads * s,
             probs=heads * s, ctx=h, ao=h, r1=h, n2=h, gate=inter, up=inter, sg=inter,
             p=inter, d=h, da=h, out=h)
    layer.rmsnorm("x", "n1")
    layer.linear("self_attn.q_proj", "n1", "q", False)
    layer.linear("self_attn.k_proj", "n1", "k", False)
    layer.linear("self_attn.v_proj", "n1", "v", False)
    # rotary: q·cos + rotate(q)·sin is a new tensor (cos/sin kept: counted once per model)
    layer.set("qr", layer.rg["q"])
    layer.set("kr", layer.rg["k"])
    if kv < heads:  # repeat_kv materialises every head's k and v
        layer.set("krep", layer.rg["kr"], h)
        layer.set("vrep", layer.rg["v"], h)
    else:
        layer.set("krep", layer.rg["kr"], kv_width)
        layer.set("vrep", layer.rg["v"], kv_width)
    layer.matmul("qr", "krep", "scores")
    layer.keep_if_grad("scores", "probs", "probs")
    layer.matmul("probs", "vrep", "ctx")
    layer.linear("self_attn.o_proj", "ctx", "ao", False)
    layer.add("x", "ao", "r1")
    layer.rmsnorm("r1", "n2")
    layer.linear("mlp.gate_proj", "n2", "gate", False)
    layer.linear("mlp.up_proj", "n2", "up", False)
    layer.set("sg", layer.rg["gate"])
    if layer.rg["gate"]:
        layer.saved["gate"] = inter  # SiLU keeps its input
    layer.mul("sg", "up", "p")
    layer.linear("mlp.down_proj", "p", "d", False)
    layer.bottleneck("d", "da")
    layer.add("r1", "da", "out")


def _layer_spec(peft: PeftFacts, index: int) -> _Layer:
    trains = index in peft.layers
    method = peft.method if trains else ""
    return _Layer(
        full=method == "full", bitfit=method == "bitfit",
        lora=frozenset(peft.lora_targets) if method == "lora" else frozenset(),
        adapter=method == "adapter", rank=peft.rank,
    )


def saved_elements_per_token(facts: ModelFacts) -> list[float]:
    """Activation elements autograd keeps for the backward pass, per token, for the
    embeddings (index 0), each transformer layer (1..L) and what sits above the layers
    (L + 1: final norm, pooling, head, loss; the per-example terms divided by ``s``).
    Requires ``facts.peft`` and ``facts.family`` (FleetsimInputError otherwise)."""
    peft = _check(facts)
    h, inter, heads, s = _shape(facts)
    kv = facts.n_kv_heads or heads
    n = facts.n_layers
    out = [0.0] * (n + 2)
    rg = peft.embeddings_trainable
    if rg:  # embedding lookup keeps its indices; BERT's embedding LayerNorm its input
        out[0] = 3.0 + ((h + 2.0) if facts.family == "bert" else 0.0)
    rotary = False
    for index in range(n):
        layer = _layer_spec(peft, index)
        layer.width["x"] = h
        layer.rg["x"] = rg
        if facts.family == "llama":
            _llama_layer(layer, h, inter, heads, kv, s)
            rotary = rotary or layer.rg["q"] or layer.rg["k"]
        else:
            _bert_layer(layer, h, inter, heads, s)
        unknown = sorted(layer.lora - layer.projections)
        if unknown:
            raise FleetsimInputError(
                f"peft facts: LoRA on {unknown}, which the memory model's {facts.family} "
                f"layer does not have (it knows: {', '.join(sorted(layer.projections))})")
        out[index + 1] = float(sum(layer.saved.values()))
        rg = layer.rg["out"]
    top = (h + float(facts.num_labels)) / s  # pooled vector and log-softmax, per example
    if facts.family == "llama" and (rg or peft.method == "full"):
        top += h + 1.0  # final RMSNorm keeps its input and rstd
    if rotary:
        top += 2.0 * (h // heads)  # one cos/sin pair shared by every layer
    out[n + 1] = top
    return out


def _check(facts: ModelFacts) -> PeftFacts:
    if facts.family not in FAMILIES:
        raise FleetsimInputError(
            f"model family: {facts.family!r} is not one the memory model knows (allowed: "
            f"{', '.join(FAMILIES)})")
    peft = facts.peft
    if peft is None:
        raise FleetsimInputError(
            f"model {facts.name!r}: no PEFT facts (where the trainable parameters sit); the "
            "memory model charges activations from the lowest trainable layer up and needs "
            "them")
    if peft.method not in PEFT_METHODS:
        raise FleetsimInputError(
            f"peft: {peft.method!r} is not one of {', '.join(PEFT_METHODS)}")
    if len(peft.trainable_per_layer) != facts.n_layers + 2:
        raise FleetsimInputError(
            f"peft facts: trainable_per_layer has {len(peft.trainable_per_layer)} entries, "
            f"expected n_layers + 2 = {facts.n_layers + 2}")
    return peft


# -- jobs ----------------------------------------------------------------------------------
def weights_bytes(facts: ModelFacts) -> float:
    """Stored weights with the runtime's overhead, bytes."""
    return facts.n_params * weight_bytes_per_param(facts.dtype_bytes) * (1.0 + RUNTIME_OVERHEAD)


def backward_peak_bytes(facts: ModelFacts) -> float:
    """The backprop job's peak above its weights and fp32 master copy, bytes: saved
    activations, gradients and transients (module docstring, ``backward_peak``).  The
    gradients are fp32 (``FP32`` bytes a trainable parameter)."""
    peft = _check(facts)
    n = facts.n_layers
    tokens = float(facts.batch_size * facts.seq_len)
    act = activation_bytes(facts)
    saved = [e * tokens * act for e in saved_elements_per_token(facts)]
    grads = [t * FP32 for t in peft.trainable_per_layer]
    transient_fwd = inference_transient_per_token(facts) * tokens * act
    transient_bwd = backward_transient_per_token(facts) * tokens * act
    # forward: the top layer runs on top of everything saved below it (or the frozen
    # prefix's forward, when nothing below is saved)
    forward = sum(saved[:n]) + transient_fwd
    # backward, from the head down to the lowest trainable layer (index into saved: +1)
    lowest = peft.lowest_trainable_layer(n)
    backward = sum(saved) + grads[n + 1] + transient_bwd
    for k in range(n - 1, max(lowest, 0) - 1, -1):
        live = sum(saved[: k + 2]) + sum(grads[k + 1:]) + transient_bwd
        backward = max(backward, live)
    if lowest < 0:  # the embeddings' backward last
        backward = max(backward, saved[0] + sum(grads) + transient_bwd)
    return max(forward, backward, float(sum(grads)))


def job_memory_bytes(facts: ModelFacts, kind: str, phone_estimator: str = "central") -> int:
    """Peak bytes of a job on a phone (formula and sources in the module docstring).

    ``kind``: "inference" | "forward_gradient" | "backprop"; ``phone_estimator`` (for
    forward_gradient): "central" | "onesided" (perturbed inference) | "jvp" (forward-mode
    AD).  ``facts.peft`` says which parameters train.  Raises FleetsimInputError for an
    unknown kind, estimator, PEFT method, model family or dtype, or missing PEFT facts."""
    if kind not in JOB_KINDS:
        raise FleetsimInputError(
            f"memory kind: {kind!r} is not one of {', '.join(JOB_KINDS)}")
    if phone_estimator not in PHONE_ESTIMATORS:
        raise FleetsimInputError(
            f"protocol.phone_estimator: {phone_estimator!r} is not one of "
            f"{', '.join(PHONE_ESTIMATORS)}")
    peft = _check(facts)
    tokens = float(facts.batch_size * facts.seq_len)
    act = activation_bytes(facts)
    weights = weights_bytes(facts)
    trainable = float(sum(peft.trainable_per_layer))
    master = trainable * FP32 if facts.dtype_bytes != 4 else 0.0
    transient = inference_transient_per_token(facts) * tokens * act
    logits = facts.batch_size * facts.num_labels * FP32
    if kind == "inference":
        return int(weights + transient + logits)
    if kind == "forward_gradient":
        lowest = peft.lowest_trainable_layer(facts.n_layers)
        prefix = tokens * facts.hidden_size * act if lowest > 0 else 0.0
        tangents = 1.0
        if phone_estimator == "jvp" and lowest < facts.n_layers:
            tangents = 2.0  # a tangent beside each live activation of a trainable layer
        state = 2.0 * trainable * FP32 + master  # perturbation v, estimate, master copy
        return int(weights + tangents * transient + prefix + logits + state)
    return int(weights + backward_peak_bytes(facts) + master)
