"""The objectives of training/losses.py against naive per-row references written here."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from training.losses import (
    cosine_distillation,
    gather_with_grad,
    info_nce,
    logit_scale_from_parameter,
    student_distillation_loss,
)


def _naive_info_nce(x, y, scale, positives=None):
    # One row at a time: -log(sum over positives of exp(s_ij) / sum over all of exp(s_ij)), both directions.
    n = x.shape[0]
    x = [row / row.norm() for row in x]
    y = [row / row.norm() for row in y]
    if positives is None:
        positives = [[i == j for j in range(n)] for i in range(n)]
    total_i2t, total_t2i = 0.0, 0.0
    for i in range(n):
        row = [scale * torch.dot(x[i], y[j]) for j in range(n)]
        col = [scale * torch.dot(y[i], x[j]) for j in range(n)]
        total_i2t = total_i2t - torch.log(
            sum(torch.exp(row[j]) for j in range(n) if positives[i][j]) / sum(torch.exp(v) for v in row)
        )
        total_t2i = total_t2i - torch.log(
            sum(torch.exp(col[j]) for j in range(n) if positives[i][j]) / sum(torch.exp(v) for v in col)
        )
    return (total_i2t + total_t2i) / (2 * n)


def _naive_cosine(a, b):
    return sum(1 - torch.dot(a[i], b[i]) / (a[i].norm() * b[i].norm()) for i in range(a.shape[0])) / a.shape[0]


def _pair(n=6, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64).requires_grad_(True)
    y = torch.randn(n, d, generator=generator, dtype=torch.float64).requires_grad_(True)
    return x, y


def test_info_nce_matches_naive_reference_in_value_and_gradient():
    x, y = _pair()
    loss = info_nce(x, y, temperature=0.05)
    gx, gy = torch.autograd.grad(loss, (x, y))
    reference = _naive_info_nce(x, y, scale=1 / 0.05)
    rx, ry = torch.autograd.grad(reference, (x, y))
    assert torch.allclose(loss.double(), reference, atol=1e-5)
    assert torch.allclose(gx, rx, atol=1e-5) and torch.allclose(gy, ry, atol=1e-5)


def test_info_nce_is_symmetric_in_its_two_inputs():
    x, y = _pair(seed=1)
    assert torch.allclose(info_nce(x, y), info_nce(y, x), atol=1e-6)


def test_info_nce_learned_logit_scale_is_exp_of_parameter_clamped_at_100():
    x, y = _pair(seed=2)
    below = torch.tensor(math.log(20.0), dtype=torch.float64)
    above = torch.tensor(math.log(500.0), dtype=torch.float64)
    assert torch.allclose(info_nce(x, y, logit_scale=below).double(), _naive_info_nce(x, y, scale=20.0), atol=1e-5)
    assert torch.allclose(info_nce(x, y, logit_scale=above).double(), _naive_info_nce(x, y, scale=100.0), atol=1e-5)
    assert logit_scale_from_parameter(above).item() == pytest.approx(100.0)


def test_same_image_positives_makes_all_captions_of_an_image_positives():
    x, y = _pair(n=6, seed=3)
    image_index = torch.tensor([0, 0, 1, 2, 2, 2])
    positives = [[bool(image_index[i] == image_index[j]) for j in range(6)] for i in range(6)]
    loss = info_nce(x, y, image_index=image_index, same_image_positives=True)
    gx, gy = torch.autograd.grad(loss, (x, y))
    reference = _naive_info_nce(x, y, scale=20.0, positives=positives)
    rx, ry = torch.autograd.grad(reference, (x, y))
    assert torch.allclose(loss.double(), reference, atol=1e-5)
    assert torch.allclose(gx, rx, atol=1e-5) and torch.allclose(gy, ry, atol=1e-5)
    # Off by default: duplicates are ordinary negatives, as in the paper.
    assert torch.allclose(
        info_nce(x, y, image_index=image_index).double(), _naive_info_nce(x, y, scale=20.0), atol=1e-5
    )


def test_batch_of_one_pair_warns_that_info_nce_is_zero():
    x, y = _pair(n=1)
    with pytest.warns(UserWarning, match="identically 0"):
        loss = info_nce(x, y)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    with pytest.warns(UserWarning, match="identically 0"):
        info_nce(*_pair(n=3), image_index=torch.tensor([4, 4, 4]), same_image_positives=True)


def test_batch_of_distinct_pairs_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info_nce(*_pair(n=2))


def test_info_nce_rejects_bad_inputs_with_clear_errors():
    x, y = _pair()
    with pytest.raises(ValueError, match="temperature"):
        info_nce(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="image_index"):
        info_nce(x, y, same_image_positives=True)
    with pytest.raises(ValueError, match="one shape"):
        info_nce(x, y[:, :4])


def test_cosine_distillation_matches_naive_reference_and_stops_target_gradient():
    x, y = _pair(seed=4)
    loss = cosine_distillation(x, y)
    assert torch.allclose(loss.double(), _naive_cosine(x, y), atol=1e-6)
    loss.backward()
    assert y.grad is None and x.grad is not None
    assert cosine_distillation(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-6)


def test_student_loss_is_the_weighted_sum_of_its_three_naive_terms():
    v, u = _pair(seed=5)
    g, t = _pair(seed=6)
    out = student_distillation_loss(
        v, u, g, t, weight_image=0.5, weight_text=2.0, weight_contrastive=3.0, temperature=0.1
    )
    image_term, text_term = _naive_cosine(v, g), _naive_cosine(u, t)
    contrastive = _naive_info_nce(v, u, scale=10.0)
    assert torch.allclose(out.image_distillation.double(), image_term, atol=1e-6)
    assert torch.allclose(out.text_distillation.double(), text_term, atol=1e-6)
    assert torch.allclose(out.contrastive.double(), contrastive, atol=1e-5)
    reference = 0.5 * image_term + 2.0 * text_term + 3.0 * contrastive
    assert torch.allclose(out.loss.double(), reference, atol=1e-5)
    grads = torch.autograd.grad(out.loss, (v, u))
    reference_grads = torch.autograd.grad(reference, (v, u))
    for got, want in zip(grads, reference_grads):
        assert torch.allclose(got, want, atol=1e-5)
    assert set(out.terms()) == {"loss_image_distill", "loss_text_distill", "loss_contrastive"}


def test_student_text_term_is_zero_when_student_text_equals_frozen_text():
    v, u = _pair(seed=7)
    g, _ = _pair(seed=8)
    out = student_distillation_loss(v, u, g, u.detach().clone())
    assert out.text_distillation.item() == pytest.approx(0.0, abs=1e-6)


def test_gather_with_grad_is_identity_in_a_single_process():
    x, y = _pair()
    gathered = gather_with_grad(x, y)
    assert gathered[0] is x and gathered[1] is y
