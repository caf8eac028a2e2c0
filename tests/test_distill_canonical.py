"""Every KD loss against its reference definition, computed by hand with explicit loops.

Batch 3 and two or three tap pairs, so a mean where the reference sums (over pairs, samples or
entries) changes the value and fails. The hand versions follow the reductions of the cited
reference code (RepDistiller), not this package's tensor code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raykd.distill import available_kd_methods, build_kd_method, get_kd_method
from raykd.models.dccnn import DCCNN
from raykd.train.config import CANONICAL_KD_WEIGHTS

B, CT, CS, H, W = 3, 6, 4, 3, 4
P = H * W
HIDDEN = ["cascades.{c}.conv.{hidden}"]


@pytest.fixture(scope="module")
def models() -> tuple[DCCNN, DCCNN]:
    torch.manual_seed(0)
    return DCCNN(depth=4, cascades=3, channels=CT), DCCNN(depth=3, cascades=3, channels=CS)


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def pairs(n: int, c_t: int = CT, c_s: int = CS, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    return [
        (rand(B, c_t, H, W, seed=seed + 2 * i), rand(B, c_s, H, W, seed=seed + 2 * i + 1))
        for i in range(n)
    ]


def arr(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def close(value: torch.Tensor, expected: float) -> None:
    assert expected > 1e-6  # a meaningful comparison, not two near-zeros
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-9)


def unit(v: list[float], eps: float = 0.0) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / (norm + eps) if eps else x / norm for x in v]


PUBLISHED_WEIGHTS = {  # RepDistiller scripts/run_cifar_distill.sh (-b); FSP's is unweighted
    "at": 1000.0,
    "fitnets": 100.0,
    "sp": 3000.0,
    "cc": 0.02,
    "fsp": 1.0,
    "pkt": 30000.0,
    "nst": 50.0,
    "ft": 200.0,
}


def test_canonical_weights_are_the_published_ones() -> None:
    for name, weight in PUBLISHED_WEIGHTS.items():
        assert get_kd_method(name).canonical_weight == weight, name
    assert {k: CANONICAL_KD_WEIGHTS[k] for k in PUBLISHED_WEIGHTS} == PUBLISHED_WEIGHTS


def test_every_registered_method_declares_its_canonical_weight() -> None:
    """On its own class: a method left at the base class's 1.0 by omission is refused here."""
    for name in available_kd_methods():
        cls = get_kd_method(name)
        assert "canonical_weight" in vars(cls), f"{name}: set canonical_weight on the class"
        assert CANONICAL_KD_WEIGHTS[name] == cls.canonical_weight > 0
    assert CANONICAL_KD_WEIGHTS.get("no-such-method", 1.0) == 1.0


def attention(f: np.ndarray, b: int) -> list[float]:
    q = [sum(f[b, c, p // W, p % W] ** 2 for c in range(f.shape[1])) / f.shape[1] for p in range(P)]
    return unit(q)


def test_at(models) -> None:
    method = build_kd_method("at", *models)
    ps = pairs(3)
    expected = 0.0
    for t, s in ps:
        t, s = arr(t), arr(s)
        sq = sum(
            (a - b) ** 2
            for i in range(B)
            for a, b in zip(attention(t, i), attention(s, i), strict=True)
        )
        expected += sq / (B * P)  # mean over batch and positions, summed over pairs
    close(method.loss(ps), expected)


def test_fitnets(models) -> None:
    teacher, student = DCCNN(depth=4, cascades=3, channels=CT), DCCNN(3, 3, channels=CT)
    method = build_kd_method("fitnets", teacher, student, HIDDEN, HIDDEN)  # identity regressors
    ps = pairs(3, CT, CT)
    expected = 0.0
    for t, s in ps:
        d = (arr(s) - arr(t)).ravel()
        expected += sum(x * x for x in d) / d.size  # nn.MSELoss: mean over all elements
    close(method.loss(ps), expected)


def test_fsp(models) -> None:
    teacher, student = DCCNN(depth=4, cascades=3, channels=CT), DCCNN(3, 3, channels=CT)
    method = build_kd_method("fsp", teacher, student, HIDDEN, HIDDEN)
    ps = pairs(3, CT, CT)

    def gram(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
        g = np.zeros((B, f1.shape[1], f2.shape[1]))
        for b in range(B):
            for i in range(f1.shape[1]):
                for j in range(f2.shape[1]):
                    g[b, i, j] = (
                        sum(f1[b, i, p // W, p % W] * f2[b, j, p // W, p % W] for p in range(P)) / P
                    )
        return g

    expected = 0.0
    for k in range(len(ps) - 1):  # consecutive taps: 2 Gram pairs, summed
        g_t = gram(arr(ps[k][0]), arr(ps[k + 1][0]))
        g_s = gram(arr(ps[k][1]), arr(ps[k + 1][1]))
        expected += float(((g_s - g_t) ** 2).sum()) / g_t.size
    close(method.loss(ps), expected)


def test_sp(models) -> None:
    method = build_kd_method("sp", *models)
    ps = pairs(2)

    def sim(f: np.ndarray) -> list[list[float]]:
        rows = f.reshape(B, -1)
        g = [[float(sum(rows[i] * rows[j])) for j in range(B)] for i in range(B)]
        return [unit(r) for r in g]

    expected = 0.0
    for t, s in ps:
        g_t, g_s = sim(arr(t)), sim(arr(s))
        expected += sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(B) for j in range(B)) / B**2
    close(method.loss(ps), expected)


def test_cc(models) -> None:
    teacher, student = models
    method = build_kd_method("cc", teacher, student, HIDDEN, HIDDEN, dim=5)
    ps = pairs(3)
    expected = 0.0
    for k, (t, s) in enumerate(ps):

        def embed(f: np.ndarray, layer: torch.nn.Linear) -> np.ndarray:
            w, bias = arr(layer.weight), arr(layer.bias)
            gap = f.mean(axis=(2, 3))
            return np.array(
                [[w[d] @ gap[b] + bias[d] for d in range(w.shape[0])] for b in range(B)]
            )

        delta = np.abs(embed(arr(s), method.embed_s[k]) - embed(arr(t), method.embed_t[k]))
        products = [sum(delta[i, d] * delta[i + 1, d] for d in range(5)) for i in range(B - 1)]
        expected += sum(products) / (B - 1)
    close(method.loss(ps), expected)


def test_pkt(models) -> None:
    method = build_kd_method("pkt", *models)
    ps = pairs(2)
    eps = 1e-7

    def distribution(f: np.ndarray) -> list[list[float]]:
        rows = [unit(list(f[b].ravel()), eps) for b in range(B)]
        k = [[(sum(a * c for a, c in zip(u, v, strict=True)) + 1) / 2 for v in rows] for u in rows]
        return [[x / sum(r) for x in r] for r in k]

    expected = 0.0
    for t, s in ps:
        p_t, p_s = distribution(arr(t)), distribution(arr(s))
        kl = sum(
            p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
            for i in range(B)
            for j in range(B)
        )
        expected += kl / B**2  # torch.mean over the B x B matrix
    close(method.loss(ps), expected)


def test_nst(models) -> None:
    method = build_kd_method("nst", *models)
    ps = pairs(2)

    def maps(f: np.ndarray, b: int) -> list[list[float]]:
        return [unit(list(f[b, c].ravel())) for c in range(f.shape[1])]

    def mean_k(a: list[list[list[float]]], c: list[list[list[float]]]) -> float:
        total = sum(
            sum(x * y for x, y in zip(u, v, strict=True)) ** 2
            for b in range(B)
            for u in a[b]
            for v in c[b]
        )
        return total / (B * len(a[0]) * len(c[0]))

    expected = 0.0
    for t, s in ps:
        mt = [maps(arr(t), b) for b in range(B)]
        ms = [maps(arr(s), b) for b in range(B)]
        expected += mean_k(mt, mt) + mean_k(ms, ms) - 2 * mean_k(ms, mt)
    close(method.loss(ps), expected)


def test_ft(models) -> None:
    teacher, student = models
    method = build_kd_method("ft", teacher, student, HIDDEN, HIDDEN, pretrain_steps=0)
    ps = pairs(3)
    expected = 0.0
    with torch.no_grad():
        factors = [
            (arr(method.paraphrasers[k].encoder(t)), arr(method.translators[k](s)))
            for k, (t, s) in enumerate(ps)
        ]
    for f_t, f_s in factors:
        total = 0.0
        for b in range(B):
            a_t, a_s = attention(f_t, b), attention(f_s, b)  # normalize(mean_c F²)
            total += sum(abs(x - y) for x, y in zip(a_t, a_s, strict=True))
        expected += total / (B * P)  # mean |·| over batch and positions, summed over pairs
    close(method.loss(ps), expected)
