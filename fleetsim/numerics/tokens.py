"""Tokenisation of a run's examples, cached on disk by tokenizer and text."""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

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
