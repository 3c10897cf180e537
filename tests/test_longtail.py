"""Samplers, logit adjustment, EM prior estimation and balanced exemplars (pipeline/eval/longtail.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.eval.longtail import (STRATEGIES, class_probabilities, estimate_prior, logit_adjust, make_sampler,
                               sampling_weights)

LABELS = ["a"] * 400 + ["b"] * 100 + ["c"] * 25 + ["d"] * 4
COUNTS = np.array([400, 100, 25, 4], dtype=float)


def test_class_probabilities_match_definitions():
    expected = {
        "instance": COUNTS / COUNTS.sum(),
        "sqrt": np.sqrt(COUNTS) / np.sqrt(COUNTS).sum(),
        "balanced": np.full(4, 0.25),
    }
    for strategy, p in expected.items():
        classes, got = class_probabilities(LABELS, strategy)
        assert classes == ["a", "b", "c", "d"]
        np.testing.assert_allclose(got, p)
        w = sampling_weights(LABELS, strategy)
        assert w.shape == (len(LABELS),) and w.sum() == pytest.approx(1.0)
        per_class = [w[np.array(LABELS) == c].sum() for c in "abcd"]
        np.testing.assert_allclose(per_class, p)


def test_progressive_interpolates_from_instance_to_balanced():
    total = 5
    inst = class_probabilities(LABELS, "instance")[1]
    bal = class_probabilities(LABELS, "balanced")[1]
    np.testing.assert_allclose(sampling_weights(LABELS, "progressive", 0, total), sampling_weights(LABELS, "instance"))
    np.testing.assert_allclose(sampling_weights(LABELS, "progressive", total - 1, total),
                               sampling_weights(LABELS, "balanced"))
    np.testing.assert_allclose(class_probabilities(LABELS, "progressive", 2, total)[1], 0.5 * inst + 0.5 * bal)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sampler_empirical_frequencies(strategy):
    n = 200_000
    epoch, total = (1, 4) if strategy == "progressive" else (0, 1)
    sampler = make_sampler(LABELS, strategy, num_samples=n, epoch=epoch, total_epochs=total, seed=3)
    idx = np.fromiter(iter(sampler), dtype=np.int64, count=n)
    counts = np.bincount(np.searchsorted(np.cumsum(COUNTS), idx, side="right"), minlength=4)
    p = class_probabilities(LABELS, strategy, epoch, total)[1]
    # Each class count is Binomial(n, p): allow 5 standard deviations.
    tol = 5 * np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) <= tol), (counts / n, p, tol)


def test_sampler_is_seeded_and_uses_replacement():
    a = list(make_sampler(LABELS, "balanced", num_samples=2000, seed=7))
    b = list(make_sampler(LABELS, "balanced", num_samples=2000, seed=7))
    c = list(make_sampler(LABELS, "balanced", num_samples=2000, seed=7, epoch=1, total_epochs=2))
    assert a == b and a != c
    assert len(set(a)) < len(a)  # with replacement: the 4 "d" examples repeat
    g = torch.Generator().manual_seed(1)
    assert len(list(make_sampler(LABELS, "sqrt", generator=g))) == len(LABELS)


def test_input_validation():
    with pytest.raises(ValueError, match="allowed: instance, sqrt, balanced, progressive"):
        sampling_weights(LABELS, "oversample")
    with pytest.raises(ValueError, match="labels is empty"):
        sampling_weights([], "instance")
    with pytest.raises(ValueError, match="total_epochs >= 2"):
        sampling_weights(LABELS, "progressive")
    with pytest.raises(ValueError, match="epoch must be in 0..3"):
        sampling_weights(LABELS, "progressive", 4, 4)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        logit_adjust(np.zeros((2, 3)), [0.2, 0.3, 0.5], tau=-1)
    with pytest.raises(ValueError, match="prior 0"):
        logit_adjust(np.zeros((2, 3)), [0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="vector of 3"):
        logit_adjust(np.zeros((2, 3)), [0.5, 0.5])


def test_logit_adjust_numpy_and_torch():
    logits = np.array([[1.0, 0.0, -1.0], [0.0, 0.5, 0.2]])
    prior = [0.7, 0.2, 0.1]
    expected = logits - 0.5 * np.log(prior)
    np.testing.assert_allclose(logit_adjust(logits, prior, tau=0.5), expected)
    t = logit_adjust(torch.tensor(logits, dtype=torch.float32), torch.tensor(prior), tau=0.5)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(logit_adjust(logits, prior, tau=0.0), logits)


@pytest.mark.parametrize("train_prior", [None, [0.2, 0.3, 0.5]])
def test_estimate_prior_recovers_shifted_prior(train_prior):
    rng = np.random.default_rng(0)
    means = np.array([-2.0, 0.0, 2.0])
    test_prior = np.array([0.6, 0.3, 0.1])
    y = rng.choice(3, size=20_000, p=test_prior)
    x = rng.normal(means[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    base = np.full(3, 1 / 3) if train_prior is None else np.array(train_prior)
    post = lik * base
    post /= post.sum(axis=1, keepdims=True)  # exact posteriors under the training prior
    est = estimate_prior(post, train_prior=train_prior)
    assert est.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(est, test_prior, atol=0.02)
    naive = post.mean(axis=0)  # the average posterior is pulled towards the training prior
    assert np.abs(est - test_prior).sum() < np.abs(naive - test_prior).sum()
