"""WordPiece tokens for the text-emotion model, the same on the device and in training.

The `tokenizers` library (Rust, wheels for aarch64) reads the bundled `tokenizer.json` of all-MiniLM-L6-v2:
lower-casing, [CLS] ... [SEP], and truncation to `MAX_TOKENS`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# GoEmotions' comments and a window's transcript fit: 99.9% of the training rows are shorter.
MAX_TOKENS = 64
PAD_ID = 0


def load_tokenizer(path: Path):
    """The tokenizer in `path`, truncating to MAX_TOKENS; ModelError-style ValueError when unreadable."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for a bad file
        raise ValueError(f"{path}: not a tokenizer.json the tokenizers library can read ({exc})") from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


def encode(tokenizer, texts: list[str], multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int32 [len(texts), T], padded to the longest, rounded up to `multiple`."""
    encodings = tokenizer.encode_batch(list(texts))
    longest = max((len(e.ids) for e in encodings), default=1)
    width = min(MAX_TOKENS, -(-longest // multiple) * multiple)
    ids = np.full((len(encodings), width), PAD_ID, np.int32)
    mask = np.zeros((len(encodings), width), np.int32)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask
