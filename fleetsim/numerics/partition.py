"""Held-out split, client partitions and client batches: numpy only.

Every random draw comes from a named ``fleetsim.rng`` stream, so the split, the
partition and each client's batch order depend only on the run seed (and the
client id), never on the order in which callers ask for them.
"""

from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.config import DataConfig
from fleetsim.numerics.datasets import load_text_dataset
from fleetsim.rng import stream

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

    Capping after splitting keeps the eval set disjoint from training whatever the caps.
    The validation split (``cfg.validation_fraction``) is not in either: see
    :func:`split_with_validation`."""
    train_idx, _validation, eval_idx = split_with_validation(cfg, labels, seed)
    return train_idx, eval_idx


def split_with_validation(
    cfg: DataConfig, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's (train, validation, test) indices into ``labels``, pairwise disjoint,
    each sorted.

    Test: the stratified held-out split (``cfg.eval_fraction``, stream data/split), never
    used to tune.  Validation: ``round(cfg.validation_fraction × n_train)`` of the
    remaining training examples, allocated to labels in proportion to their counts
    (largest remainder), drawn from the stream data/validation — its own stream, so a run
    without a validation split trains on exactly the examples it did before the split
    existed.  Then the caps (``max_examples``, ``max_validation_examples``,
    ``max_eval_examples``; stratified, seeded)."""
    train_idx, eval_idx = train_eval_split(labels, cfg.eval_fraction, seed)
    labels = np.asarray(labels, dtype=np.int64)
    validation_idx = np.zeros(0, dtype=np.int64)
    if cfg.validation_fraction > 0:
        n_validation = int(round(cfg.validation_fraction * len(train_idx)))
        validation_idx, train_idx = _stratified_take(
            labels, train_idx, n_validation, stream(seed, "data", "validation")
        )
        if cfg.max_validation_examples is not None:
            validation_idx = stratified_subsample(
                labels, validation_idx, cfg.max_validation_examples, seed, "validation"
            )
    if cfg.max_examples is not None:
        train_idx = stratified_subsample(labels, train_idx, cfg.max_examples, seed, "train")
    if cfg.max_eval_examples is not None:
        eval_idx = stratified_subsample(labels, eval_idx, cfg.max_eval_examples, seed, "eval")
    return train_idx, validation_idx, eval_idx


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
    labels: np.ndarray, n_clients: int, scheme: str, alpha: float, seed: int,
    per_client: Optional[int] = None,
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
    * ``"sampled"``: client i holds ``per_client`` examples drawn uniformly without
      replacement (all of them when there are fewer), independently of the other
      clients, so clients share examples.  For fleets larger than the dataset (10,000
      phones learning from AG News' 6,080 training items): each phone's data is an iid
      sample of the same population, which is what ``iid`` approximates for smaller
      fleets.  Raises ValueError when ``per_client`` is missing.

    All draws come from the stream ``("data", "partition")``.  Each client's indices
    are sorted; :func:`client_batches` fixes the order in which they are used.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n_clients <= 0:
        raise ValueError(f"n_clients must be positive, got {n_clients}")
    if scheme not in ("iid", "dirichlet", "sampled"):
        raise FleetsimInputError(
            f"data.partition: unknown scheme {scheme!r}; allowed values: iid, dirichlet, "
            "sampled"
        )
    rng = stream(seed, "data", "partition")
    n_examples = len(labels)
    if n_examples == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_clients)]
    if scheme == "iid":
        shuffled = rng.permutation(n_examples).astype(np.int64)
        return [np.sort(part) for part in np.array_split(shuffled, n_clients)]
    if scheme == "sampled":
        if per_client is None or per_client <= 0:
            raise ValueError(f"partition 'sampled' needs per_client > 0, got {per_client}")
        take = min(int(per_client), n_examples)
        # one row of sorted keys per client: argsort of uniform keys is a uniform sample
        # without replacement, drawn for all clients at once
        parts = []
        for start in range(0, n_clients, 1024):  # bounded memory for big fleets
            rows = min(1024, n_clients - start)
            keys = rng.random((rows, n_examples))
            chosen = np.argpartition(keys, take - 1, axis=1)[:, :take]
            parts.extend(np.sort(row).astype(np.int64) for row in chosen)
        return parts
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
        "data.partition: sampled lets clients share examples; numerics.engine: none runs "
        "without examples)"
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
    return check_train_split(cfg, dataset.labels[train_idx], n_clients, seed)


def check_train_split(cfg: DataConfig, train_labels: np.ndarray, n_clients: int,
                      seed: int) -> int:
    """:func:`check_examples_per_client` on a split already made (``train_labels``: the
    labels of the training split, in ``train_idx`` order): the number of training
    examples, or FleetsimInputError when some client would hold none."""
    n_train = int(len(train_labels))
    if n_train >= n_clients or (cfg.partition == "sampled" and n_train > 0):
        return n_train
    parts = partition(train_labels, n_clients, cfg.partition, cfg.alpha, seed,
                      per_client=cfg.examples_per_client or cfg.batch_size)
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
