"""Retrieval metrics: hand-computed toy cases, ties, and the chunked implementation against a naive reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.metrics import retrieval_metrics, retrieval_ranks

TOL = 1e-6


def naive_metrics(images, texts, owner, ks, tol=TOL):
    """Full-matrix reference: every rank from explicit comparisons over the whole score matrix (float64)."""
    images = torch.nn.functional.normalize(torch.as_tensor(images, dtype=torch.float64), dim=-1)
    texts = torch.nn.functional.normalize(torch.as_tensor(texts, dtype=torch.float64), dim=-1)
    scores = (texts @ images.T).numpy()
    owner = np.asarray(owner)
    t2i = []
    for j in range(len(texts)):
        others = np.delete(scores[j], owner[j])
        t2i.append(1 + np.sum(others >= scores[j, owner[j]] - tol))
    first, aps = [], []
    for i in range(len(images)):
        relevant = np.flatnonzero(owner == i)
        if len(relevant) == 0:
            continue
        column = scores[:, i]
        irrelevant = np.delete(column, relevant)
        ranks = [p + 1 + np.sum(irrelevant >= s - tol) for p, s in enumerate(sorted(column[relevant], reverse=True))]
        first.append(ranks[0])
        aps.append(np.mean([(p + 1) / r for p, r in enumerate(ranks)]))
    out = {}
    for prefix, ranks, ap in (("t2i", np.array(t2i, float), None), ("i2t", np.array(first, float), np.array(aps))):
        ap = 1.0 / ranks if ap is None else ap
        out.update({f"{prefix}_recall@{k}": 100 * np.mean(ranks <= k) for k in ks})
        out[f"{prefix}_mrr"] = 100 * np.mean(1 / ranks)
        out[f"{prefix}_map"] = 100 * np.mean(ap)
        out[f"{prefix}_median_rank"] = np.median(ranks)
        out[f"{prefix}_mean_rank"] = np.mean(ranks)
    return out


def assert_close(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_toy_case_with_two_captions_and_an_uncaptioned_image_matches_hand_computation():
    images = torch.eye(3)
    # caption 0, 1 describe image 0; caption 2 describes image 1; image 2 has no caption (t2i distractor only).
    texts = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.5, 0.1, 0.6]])
    out = retrieval_metrics(images, texts, [0, 0, 1], ks=(1, 2, 3))
    # t2i ranks: 1, 2, 3.
    assert out["t2i_recall@1"] == pytest.approx(100 / 3)
    assert out["t2i_recall@2"] == pytest.approx(200 / 3)
    assert out["t2i_recall@3"] == pytest.approx(100.0)
    assert out["t2i_mrr"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)
    assert out["t2i_map"] == pytest.approx(out["t2i_mrr"])
    assert out["t2i_median_rank"] == 2.0 and out["t2i_mean_rank"] == 2.0
    # i2t: image 0 ranks its captions 1st and 3rd (AP = (1/1 + 2/3) / 2); image 1 ranks its caption 2nd (AP 1/2).
    assert out["i2t_recall@1"] == pytest.approx(50.0)
    assert out["i2t_recall@2"] == pytest.approx(100.0)
    assert out["i2t_mrr"] == pytest.approx(75.0)
    assert out["i2t_map"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.5) / 2)
    assert out["i2t_median_rank"] == 1.5 and out["i2t_mean_rank"] == 1.5
    ranks = retrieval_ranks(images, texts, [0, 0, 1])
    assert ranks["i2t_query_images"].tolist() == [0, 1]


def test_relevant_item_tied_with_irrelevant_one_ranks_after_it():
    images = torch.eye(2)
    texts = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    out = retrieval_metrics(images, texts, [0, 1], ks=(1,))
    ranks = retrieval_ranks(images, texts, [0, 1])
    assert ranks["t2i_rank"].tolist() == [2, 1]
    assert out["t2i_recall@1"] == 50.0


def test_constant_scores_give_worst_case_not_perfect_results():
    images, texts = torch.ones(4, 3), torch.ones(8, 3)
    owner = torch.arange(8) // 2
    out = retrieval_metrics(images, texts, owner, ks=(1, 4))
    assert out["t2i_recall@1"] == 0.0 and out["t2i_recall@4"] == 100.0
    assert out["t2i_median_rank"] == 4.0 and out["t2i_mrr"] == pytest.approx(25.0)
    # Each image's 2 captions rank after the 6 others: 7th and 8th.
    assert out["i2t_mean_rank"] == 7.0
    assert out["i2t_map"] == pytest.approx(100 * (1 / 7 + 2 / 8) / 2)


def test_perfect_embeddings_give_perfect_scores():
    images = torch.eye(5)
    out = retrieval_metrics(images, images.repeat_interleave(2, 0), torch.arange(10) // 2)
    assert out["t2i_recall@1"] == 100.0 and out["i2t_recall@1"] == 100.0 and out["i2t_map"] == 100.0


@pytest.mark.parametrize("chunk_size", [4, 16, 4096])
def test_chunked_metrics_equal_naive_full_matrix_reference(chunk_size):
    rng = np.random.default_rng(chunk_size)
    images = rng.normal(size=(37, 8)).astype(np.float32)
    owner = rng.integers(0, 30, size=83)  # images 30..36 have no caption; others 0..many
    texts = (images[owner] + 1.2 * rng.normal(size=(83, 8))).astype(np.float32)
    ks = (1, 5, 10)
    assert_close(
        retrieval_metrics(images, texts, owner, ks=ks, chunk_size=chunk_size), naive_metrics(images, texts, owner, ks)
    )


@pytest.mark.parametrize("chunk_size", [2, 5, 4096])
def test_chunked_metrics_equal_reference_with_many_exact_ties(chunk_size):
    rng = np.random.default_rng(7)
    pool = rng.normal(size=(4, 6)).astype(np.float32)  # few distinct vectors: most scores are exact ties
    images = pool[rng.integers(0, 4, size=25)]
    owner = rng.integers(0, 25, size=60)
    texts = pool[rng.integers(0, 4, size=60)]
    ks = (1, 3, 10)
    assert_close(
        retrieval_metrics(images, texts, owner, ks=ks, chunk_size=chunk_size), naive_metrics(images, texts, owner, ks)
    )


def test_unnormalised_numpy_and_torch_inputs_give_the_same_numbers():
    rng = np.random.default_rng(1)
    images, texts = rng.normal(size=(10, 4)), rng.normal(size=(20, 4))
    owner = np.arange(20) % 10
    a = retrieval_metrics(images * 5.0, texts, owner)
    b = retrieval_metrics(torch.tensor(images, dtype=torch.float32), torch.tensor(texts * 0.1), torch.tensor(owner))
    assert_close(a, b)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_embeddings_raise(bad):
    images = torch.eye(3)
    texts = torch.eye(3)
    texts[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        retrieval_metrics(images, texts, [0, 1, 2])


def test_bad_inputs_raise_with_the_offending_value():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        retrieval_metrics(torch.eye(3), torch.eye(3), [0, 1, 3])
    with pytest.raises(ValueError, match="same width"):
        retrieval_metrics(torch.eye(3), torch.ones(3, 2), [0, 1, 2])
    with pytest.raises(ValueError, match="one image index per caption"):
        retrieval_metrics(torch.eye(3), torch.eye(3), [0, 1])
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(torch.eye(3), torch.eye(3), [0, 1, 2], ks=(0,))


def test_packed_mask_counts_equal_plain_sums():
    from training.metrics import _count_per_column, _count_per_row

    mask = torch.rand(256, 2048, generator=torch.Generator().manual_seed(0)) > 0.3
    assert torch.equal(_count_per_row(mask), mask.sum(1))
    assert torch.equal(_count_per_column(mask), mask.sum(0))


def test_large_padded_blocks_equal_naive_reference():
    # Blocks of >= 128 images x >= 1024 captions take the zero-padded, bit-packed counting path.
    rng = np.random.default_rng(3)
    images = rng.normal(size=(300, 16)).astype(np.float32)
    owner = rng.integers(0, 290, size=2100)
    texts = (images[owner] + 2.0 * rng.normal(size=(2100, 16))).astype(np.float32)
    ks = (1, 5, 10)
    got = retrieval_metrics(images, texts, owner, ks=ks, chunk_size=1500)
    assert_close(got, naive_metrics(images, texts, owner, ks))
