"""Hard negatives: lexicon swaps, the triples format (incl. the synthetic generator's), and the accuracy metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.hard_negatives import (
    hard_negative_metrics,
    load_triples,
    make_lexicon_triples,
    swap_caption,
    write_triples,
)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_each_swap_type_changes_exactly_one_word_of_its_kind():
    caption = "Two red dogs sit on top of a bench"
    color = swap_caption(caption, "color", rng())
    assert color != caption and "red" not in color and color.replace(color.split()[1], "red") == caption
    obj = swap_caption("two red dogs sit on the grass", "object", rng())
    assert "dogs" not in obj and obj.split()[2].endswith("s")  # a plural noun stays plural
    assert obj.split()[:2] == ["two", "red"] and obj.split()[3:] == ["sit", "on", "the", "grass"]
    assert swap_caption(caption, "spatial", rng()) == "Two red dogs sit under a bench"  # longest phrase first
    count = swap_caption(caption, "count", rng())
    assert count.split()[0] in {"Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten"}
    assert swap_caption("a dog left of a cat", "spatial", rng()) == "a dog right of a cat"


def test_swap_returns_none_when_nothing_to_swap():
    assert swap_caption("something happens here", "color", rng()) is None
    assert swap_caption("something happens here", "object", rng()) is None
    with pytest.raises(ValueError, match="Unknown swap type"):
        swap_caption("a red car", "texture", rng())


def test_lexicon_triples_are_deterministic_and_count_skipped_images():
    rows = [
        {"image_id": "1", "image": "/x/1.jpg", "captions": ["nothing here", "a black cat on a table"]},
        {"image_id": "2", "image": "/x/2.jpg", "captions": ["it is what it is"]},
        {"image_id": "3", "image": "/x/3.jpg", "captions": ["three men near two horses"]},
    ]
    triples, skipped = make_lexicon_triples(rows, seed=5)
    again, _ = make_lexicon_triples(list(reversed(rows)), seed=5)
    assert skipped == 1
    assert [t["image_id"] for t in triples] == ["1", "3"]
    assert triples[0]["positive"] == "a black cat on a table"
    assert {n["swap"] for n in triples[0]["negatives"]} == {"color", "object", "spatial"}
    assert {n["swap"] for n in triples[1]["negatives"]} == {"object", "count"}
    assert sorted(json.dumps(t, sort_keys=True) for t in triples) == sorted(
        json.dumps(t, sort_keys=True) for t in again
    )
    other, _ = make_lexicon_triples(rows, seed=6)
    assert all(n["caption"] != triples[0]["positive"] for t in other for n in t["negatives"])


def test_triples_round_trip_and_relative_paths_resolve_against_the_file(tmp_path):
    triples = [
        {
            "image_id": "a",
            "image": "img/a.png",
            "positive": "a red box",
            "negatives": [{"caption": "a blue box", "swap": "color"}],
        }
    ]
    path = write_triples(triples, tmp_path / "hn.json")
    loaded = load_triples(path)
    assert loaded[0]["image"] == str(tmp_path / "img" / "a.png")
    assert loaded[0]["negatives"] == triples[0]["negatives"]


def test_malformed_triples_raise_with_the_entry(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"image_id": "a", "image": "x.png", "positive": "p"}]))
    with pytest.raises(ValueError, match="entry 0 lacks"):
        load_triples(path)
    with pytest.raises(FileNotFoundError):
        load_triples(tmp_path / "missing.json")


def test_loader_accepts_the_synthetic_generators_triples(tmp_path):
    from training.synthetic import SyntheticConfig, build_synthetic

    config = SyntheticConfig(
        num_pretrain_scenes=2, num_pretrain_closeups=2, num_train=2, num_val=2, num_test=3, num_zero_shot=3
    )
    data = build_synthetic(tmp_path, config)
    triples = load_triples(data.hard_negatives_path)
    assert len(triples) == 3
    assert {n["swap"] for n in triples[0]["negatives"]} >= {"color", "spatial", "count"}


def test_hard_negative_accuracy_matches_hand_computation_and_ties_lose():
    image = torch.eye(2)
    positive = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # triple 0: wins its color pair, ties its count pair (a loss); triple 1: wins both pairs.
    negatives = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    out = hard_negative_metrics(image, positive, negatives, [0, 0, 1, 1], ["color", "count", "color", "count"])
    assert out["hn_accuracy"] == 50.0
    assert out["hn_pairwise_accuracy"] == 75.0
    assert out["hn_color_accuracy"] == 100.0 and out["hn_count_accuracy"] == 50.0
    assert out["hn_color_count"] == 2 and out["hn_n_triples"] == 2
