"""Build a real `CLIPTokenizer` from scratch (byte-level BPE, CLIP's `</w>` suffix) for offline tiny/demo models."""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# CLIP's word splitter (identical to transformers' CLIPTokenizer), so the trained merges fit its pre-tokenisation.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


# Word-final symbols ("t</w>") are trained as single private-use characters. The `tokenizers` BPE trainer numbers
# symbols it creates on the fly (like "t</w>" from `end_of_word_suffix`) in hash-map order, so equal-count merges
# were broken differently on every run; with every symbol in the sorted initial alphabet the merges are reproducible.
_FINAL_OFFSET = 0xF0000


def _final(symbol: str) -> str:
    return chr(_FINAL_OFFSET + ord(symbol))


def _to_clip(symbol: str) -> str:
    return "".join(c if ord(c) < _FINAL_OFFSET else chr(ord(c) - _FINAL_OFFSET) + "</w>" for c in symbol)


def train_clip_tokenizer(
    captions: Iterable[str], *, vocab_size: int = 1000, model_max_length: int = 77
) -> CLIPTokenizer:
    """Train a byte-level BPE on `captions` and wrap it as a stock `transformers.CLIPTokenizer`.

    Every byte is in the vocabulary (no unknown tokens on unseen text). The result saves and reloads with
    `CLIPTokenizer.from_pretrained` and behaves like OpenAI CLIP's tokenizer (lower-casing, `</w>` word ends). The
    same captions always give the same vocabulary and merges.

    Args:
        captions: training text.
        vocab_size: vocabulary size including the 512 byte symbols and the 2 special tokens; smaller when the
            captions do not support that many merges (use `len(tokenizer)` for the model's `vocab_size`).
        model_max_length: context length written to the tokenizer (CLIP: 77).
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < 2 * len(alphabet) + 2:
        raise ValueError(f"vocab_size must be at least {2 * len(alphabet) + 2} (all bytes twice + 2 specials).")
    # CLIP's own normalisation and word splitting (identical to transformers' CLIPTokenizer).
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    splitter = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )

    def words(caption: str) -> str:
        pieces = splitter.pre_tokenize_str(normalizer.normalize_str(caption))
        return " ".join(word[:-1] + _final(word[-1]) for word, _ in pieces if word)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=alphabet + [_final(symbol) for symbol in alphabet],
        show_progress=False,
        min_frequency=1,
    )
    bpe.train_from_iterator((words(c) for c in captions if c and c.strip()), trainer=trainer)
    # OpenAI CLIP's layout: bytes, bytes + "</w>", merged symbols in merge order, then the two special tokens.
    vocab_list = list(alphabet) + [symbol + "</w>" for symbol in alphabet]
    seen = set(vocab_list)
    merges = []
    for left, right in _merges_of(bpe):
        if len(vocab_list) >= vocab_size - 2:
            break
        left, right = _to_clip(left), _to_clip(right)
        merges.append((left, right))
        if left + right not in seen:
            vocab_list.append(left + right)
            seen.add(left + right)
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _merges_of(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    state = json.loads(tokenizer.to_str())
    merges = state["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
