"""An offline GemmaTokenizer for the in-code presets (no vocabulary file to download).

The vocabulary is the Gemma special tokens, the 256 byte-fallback tokens and a few common
characters, so any text tokenizes (unknown characters fall back to bytes).
"""

from __future__ import annotations

from transformers import GemmaTokenizer

_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
_CHARS = "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"


def build_tokenizer(max_length: int) -> GemmaTokenizer:
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = max_length
    return tokenizer
