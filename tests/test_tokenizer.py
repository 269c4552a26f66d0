"""The offline CLIP tokenizer builder: stock CLIPTokenizer behaviour, exact size, reproducible across processes."""

from __future__ import annotations

import subprocess
import sys

from transformers import AutoTokenizer, CLIPTokenizer

from training.tokenizer import train_clip_tokenizer

SCRIPT = """
import csv, hashlib, json, sys
from training.tokenizer import train_clip_tokenizer
captions = [row["caption"] for row in csv.DictReader(open(sys.argv[1], encoding="utf-8"))]
tokenizer = train_clip_tokenizer(captions, vocab_size=900)
print(hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest())
"""


def test_same_captions_give_the_same_tokenizer_in_every_process(shared_data):
    captions = shared_data / "coco_mini_captions" / "captions.csv"
    digests = {
        subprocess.run(
            [sys.executable, "-c", SCRIPT, str(captions)], capture_output=True, text=True, check=True, timeout=120
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(digests) == 1


def test_tokenizer_is_a_stock_clip_tokenizer_of_the_requested_size(tmp_path, coco_captions):
    tokenizer = train_clip_tokenizer(coco_captions, vocab_size=900)
    assert isinstance(tokenizer, CLIPTokenizer) and len(tokenizer) == 900
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (898, 899)
    ids = tokenizer("A man riding a Horse!")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert "man</w>" in tokens and "a</w>" in tokens  # lower-cased, CLIP's word-end suffix
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a man riding a horse !"
    unseen = tokenizer("zebra ñ 42")["input_ids"]
    assert tokenizer.unk_token_id not in unseen[1:-1]  # every byte is in the vocabulary
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("A man riding a Horse!")["input_ids"] == ids
