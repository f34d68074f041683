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

The pieces live in their own rooms: dataset sources in :mod:`fleetsim.numerics.datasets`,
the split, partitions and batches (numpy only) in :mod:`fleetsim.numerics.partition`,
tokenisation in :mod:`fleetsim.numerics.tokens`, and ``DataConfig`` beside the other
section models in :mod:`fleetsim.numerics.config`; this module gathers them under one name.
"""

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
    client_batches,
    empty_clients_message,
    partition,
    split_for_run,
    stratified_subsample,
    train_eval_split,
)
from fleetsim.numerics.tokens import tokenize_cached

__all__ = [
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
    "stratified_subsample",
    "tokenize_cached",
    "train_eval_split",
]
