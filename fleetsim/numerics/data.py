"""Datasets, held-out split, client partitions, client batches and cached tokenisation.

:func:`build_data_plan` builds a run's :class:`DataPlan` in one pass (the runner builds it
once and hands it to the engine); the pipeline it runs::

    dataset = load_text_dataset(cfg, base_dir)                 # all examples, fixed order
    train_idx, eval_idx = split_for_run(cfg, dataset.labels, seed)   # stratified + caps
    # (split_with_validation also carves data.validation_fraction off train_idx)
    parts = partition(dataset.labels[train_idx], n_clients, cfg.partition, cfg.alpha, seed,
                      per_client=cfg.examples_per_client or cfg.batch_size)
    client_idx = [train_idx[p] for p in parts]                 # back to dataset indices
    batches = client_batches(client_idx[c], cfg.batch_size, seed, c)
    ids, mask = tokenize_cached(dataset.texts, tokenizer, max_len, cache_dir)

Every random draw comes from a named ``fleetsim.rng`` stream, so the split, the
partition and each client's batch order depend only on the run seed (and the
client id), never on the order in which callers ask for them.

The pieces live in their own rooms: dataset sources in :mod:`fleetsim.numerics.datasets`,
the split, partitions and batches (numpy only) in :mod:`fleetsim.numerics.partition`,
tokenisation in :mod:`fleetsim.numerics.tokens`, and ``DataConfig`` beside the other
section models in :mod:`fleetsim.numerics.config`; this module gathers them under one name.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetsim.numerics.config import (
    AG_NEWS_LABEL_NAMES,
    ALLOWED_NAMES_TEXT,
    BUILTIN_DATASETS,
    ROTTEN_TOMATOES_CLASSES,
    DataConfig,
)
from fleetsim.numerics.datasets import TextDataset, load_ag_news_csv, load_text_dataset
from fleetsim.numerics.partition import (
    check_examples_per_client,
    check_train_split,
    client_batches,
    empty_clients_message,
    partition,
    split_for_run,
    split_with_validation,
    stratified_subsample,
    train_eval_split,
)
from fleetsim.numerics.tokens import tokenize_cached


@dataclass
class DataPlan:
    """The run's data, built once (:func:`build_data_plan`): the dataset's texts and labels,
    the train / validation / held-out split (dataset indices), and per client its local
    batches (dataset indices, in the seeded order) and their count (numpy only)."""

    labels: np.ndarray
    train_idx: np.ndarray
    eval_idx: np.ndarray
    batches: list[list[np.ndarray]]  # [client][batch] -> dataset indices
    label_names: list[str]
    texts: list[str] = field(default_factory=list)
    # data.validation_fraction: a split of the training data for tuning (empty when 0)
    validation_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # [client] -> number of local batches (what a systems-only engine needs)
    batch_counts: list[int] = field(default_factory=list)
    # host seconds the plan took to build (run metadata: numerics.host_timings_s.data_s)
    build_s: float = 0.0

    @property
    def num_labels(self) -> int:
        """Number of classes of the dataset (the classifier head's outputs)."""
        return len(self.label_names)


def build_data_plan(
    data: DataConfig, n_clients: int, seed: int, base_dir: Path, *,
    with_batches: bool = True, check_clients: bool = False,
) -> DataPlan:
    """The run's data in one pass: the dataset is loaded once, split once (train,
    validation, held out: :func:`split_with_validation`), partitioned over ``n_clients``
    clients once, and each client's batches cut (:func:`client_batches`).

    ``check_clients``: first refuse a training split that leaves some client without
    examples (:func:`check_train_split`: FleetsimInputError, one line), as a run that
    computes gradients must.  ``with_batches=False`` (a systems-only engine): only the
    batch counts, and under ``data.partition: sampled`` no partition draw (every client
    holds the same number of examples).  Every draw is from a named stream keyed by the
    seed (and client), so the plan is the same whichever pieces are built."""
    started = time.perf_counter()
    dataset = load_text_dataset(data, base_dir)
    train_idx, validation_idx, eval_idx = split_with_validation(data, dataset.labels, seed)
    if check_clients:
        check_train_split(data, dataset.labels[train_idx], n_clients, seed)
    per_client = data.examples_per_client or data.batch_size
    batches: list[list[np.ndarray]] = []
    if not with_batches and data.partition == "sampled":
        counts = [math.ceil(min(per_client, len(train_idx)) / data.batch_size)] * n_clients
    else:
        parts = partition(dataset.labels[train_idx], n_clients, data.partition, data.alpha,
                          seed, per_client=per_client)
        counts = [math.ceil(len(p) / data.batch_size) for p in parts]
        if with_batches:
            batches = [
                client_batches(train_idx[part], data.batch_size, seed, client)
                for client, part in enumerate(parts)
            ]
    return DataPlan(
        dataset.labels, train_idx, eval_idx, batches, list(dataset.label_names),
        list(dataset.texts), validation_idx, counts, time.perf_counter() - started,
    )


def plan_data(data: DataConfig, n_clients: int, seed: int, base_dir: Path) -> DataPlan:
    """:func:`build_data_plan` with every client's batches."""
    return build_data_plan(data, n_clients, seed, base_dir)


def batch_of(plan: DataPlan, client_id: int, batch_index: int) -> np.ndarray:
    if not 0 <= client_id < len(plan.batches):
        raise ValueError(f"client_id {client_id} out of range 0..{len(plan.batches) - 1}")
    batches = plan.batches[client_id]
    if not batches:
        raise ValueError(f"client {client_id} holds no examples")
    return batches[batch_index % len(batches)]


__all__ = [
    "DataPlan",
    "batch_of",
    "build_data_plan",
    "check_train_split",
    "plan_data",
    "AG_NEWS_LABEL_NAMES",
    "ALLOWED_NAMES_TEXT",
    "BUILTIN_DATASETS",
    "ROTTEN_TOMATOES_CLASSES",
    "DataConfig",
    "TextDataset",
    "check_examples_per_client",
    "client_batches",
    "empty_clients_message",
    "load_ag_news_csv",
    "load_text_dataset",
    "partition",
    "split_for_run",
    "split_with_validation",
    "stratified_subsample",
    "tokenize_cached",
    "train_eval_split",
]
