"""Largest deviation of each alignkit loss from its oracle over random float64 cases.

    python benchmarks/oracle_deviations.py        # ~1 minute; prints one line per oracle

The tests assert tolerances; this reports how far inside them the implementation lands.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.stats import skew

from alignkit import functional as F

CASES = 20


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def bures(rng: np.random.Generator) -> tuple[float, float]:
    import ot

    full = diag = 0.0
    for _ in range(CASES):
        k_a, k_b, d = rng.integers(1, 6), rng.integers(1, 6), rng.integers(2, 8)
        ma, mb = torch.from_numpy(rng.normal(size=(k_a, d))), torch.from_numpy(rng.normal(size=(k_b, d)))
        fa, fb = torch.from_numpy(rng.normal(size=(k_a, d, d))), torch.from_numpy(rng.normal(size=(k_b, d, d)))
        ca, cb = fa @ fa.mT / d + 0.1 * torch.eye(d), fb @ fb.mT / d + 0.1 * torch.eye(d, dtype=torch.float64)
        full = max(full, relative(F.bures_wasserstein_cost(ma, ca, mb, cb), ot.gaussian.bures_wasserstein_distance(ma, mb, ca, cb) ** 2))
        va, vb = torch.from_numpy(rng.uniform(0.05, 2, (k_a, d))), torch.from_numpy(rng.uniform(0.05, 2, (k_b, d)))
        diag = max(diag, relative(F.bures_wasserstein_cost(ma, va, mb, vb), ot.gaussian.bures_wasserstein_distance(ma, mb, va.diag_embed(), vb.diag_embed()) ** 2))
    return full, diag


def sinkhorn_vs_pot(rng: np.random.Generator) -> float:
    import ot

    worst = 0.0
    for _ in range(CASES):
        n, m = rng.integers(2, 12, size=2)
        cost = torch.from_numpy(rng.uniform(0, 2, (n, m)))
        a, b = (torch.from_numpy(w / w.sum()) for w in (rng.uniform(0.2, 1, n), rng.uniform(0.2, 1, m)))
        eps = float(rng.uniform(0.05, 1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=200_000, stopThr=1e-14)
        for plan in (F.sinkhorn(cost, a, b, eps, tol=1e-13, max_iter=200_000).plan, F.multi_marginal_sinkhorn(cost, [a, b], eps, tol=1e-13, max_iter=200_000).plan):
            worst = max(worst, float((plan - expected).abs().max()))
    return worst


def multi_marginal_vs_linprog(rng: np.random.Generator) -> tuple[float, float]:
    gap = marginal = 0.0
    for shape in [(3, 4, 3), (4, 4, 4), (3, 3, 4, 3), (4, 4, 4, 4)] * 2:
        cost = torch.from_numpy(rng.uniform(0, 2, shape))
        marginals = [torch.from_numpy(w / w.sum()) for w in (rng.uniform(0.2, 1, k) for k in shape)]
        rows, rhs = [], []
        for axis, nu in enumerate(marginals):
            for k in range(shape[axis]):
                mask = np.zeros(shape)
                index = [slice(None)] * len(shape)
                index[axis] = k
                mask[tuple(index)] = 1
                rows.append(mask.ravel())
                rhs.append(float(nu[k]))
        exact = linprog(cost.numpy().ravel(), A_eq=np.array(rows), b_eq=rhs, bounds=(0, None), method="highs").fun
        result = F.multi_marginal_sinkhorn(cost, marginals, 2e-3, tol=1e-9, max_iter=200_000)
        gap = max(gap, (float(result.value) - exact) / exact)
        marginal = max(marginal, result.marginal_error)
    return gap, marginal


def gmm_vs_sklearn(rng: np.random.Generator) -> dict[str, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    worst = {"diag": 0.0, "full": 0.0}
    for covariance_type in ("diag", "full"):
        for _ in range(CASES // 2):
            n, d, k = 200, int(rng.integers(2, 6)), int(rng.integers(2, 5))
            x = torch.from_numpy(rng.normal(size=(n, d)) + rng.normal(scale=4, size=(k, d))[rng.integers(0, k, n)])
            means = x[rng.choice(n, k, replace=False)]
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
            cov = torch.ones(k, d, dtype=torch.float64) if covariance_type == "diag" else torch.eye(d, dtype=torch.float64).repeat(k, 1, 1)
            ours = F.fit_gmm(x, k, covariance_type=covariance_type, n_iter=10, means_init=means, weights_init=weights, covariances_init=cov)
            model = GaussianMixture(k, covariance_type=covariance_type, max_iter=10, tol=0, weights_init=weights.numpy(), means_init=means.numpy(), precisions_init=cov.numpy(), random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(x.numpy())
            for a, b in ((ours.weights, model.weights_), (ours.means, model.means_), (ours.covariances, model.covariances_)):
                worst[covariance_type] = max(worst[covariance_type], relative(a.numpy(), b))
    return worst


def _gaussian_kernel(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(a, b) ** 2 / (2 * sigma**2))


def mmd(rng: np.random.Generator) -> tuple[float, float]:
    from geomloss import SamplesLoss

    biased = unbiased = 0.0
    for _ in range(CASES):
        n, m, d = rng.integers(2, 60), rng.integers(2, 60), rng.integers(1, 9)
        x, y = torch.from_numpy(rng.normal(size=(n, d))), torch.from_numpy(rng.normal(size=(m, d)) + 0.5)
        sigma = float(rng.uniform(0.3, 4))
        biased = max(biased, relative(F.gaussian_mmd(x, y, sigma), 2 * SamplesLoss("gaussian", blur=sigma, backend="tensorized")(x, y)))
        kxx, kyy = _gaussian_kernel(x, x, sigma), _gaussian_kernel(y, y, sigma)
        u = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * _gaussian_kernel(x, y, sigma).mean()
        unbiased = max(unbiased, float(abs(F.gaussian_mmd(x, y, sigma, estimator="unbiased") - u)))
    return biased, unbiased


def moments(rng: np.random.Generator) -> tuple[float, float, float]:
    worst = [0.0, 0.0, 0.0]
    for _ in range(CASES):
        x = rng.normal(size=(int(rng.integers(3, 80)), int(rng.integers(1, 6)))) ** 3
        got = F.feature_moments(torch.from_numpy(x))
        for i, (a, b) in enumerate(((got.mean, x.mean(0)), (got.covariance, np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])), (got.skewness, skew(x, bias=True)))):
            worst[i] = max(worst[i], relative(a.numpy(), b))
    return tuple(worst)


def main() -> None:
    rng = np.random.default_rng(0)
    full, diag = bures(rng)
    print(f"bures_wasserstein_cost vs POT bures_wasserstein_distance**2: full max rel {full:.2e}, diag max rel {diag:.2e}")
    print(f"sinkhorn / multi_marginal_sinkhorn(M=2) vs POT sinkhorn_log: max abs plan difference {sinkhorn_vs_pot(rng):.2e}")
    gap, marginal = multi_marginal_vs_linprog(rng)
    print(f"multi_marginal_sinkhorn M=3,4 vs scipy linprog: max relative cost gap {gap:.2e}, max marginal error {marginal:.2e}")
    print("fit_gmm vs sklearn GaussianMixture (10 EM steps, same start): " + ", ".join(f"{k} max rel {v:.2e}" for k, v in gmm_vs_sklearn(rng).items()))
    biased, unbiased = mmd(rng)
    print(f"gaussian_mmd biased vs 2 x geomloss: max rel {biased:.2e}; unbiased vs hand-written U-statistic: max abs {unbiased:.2e}")
    mean, cov, sk = moments(rng)
    print(f"feature_moments vs numpy mean / np.cov / scipy skew(bias=True): max rel {mean:.2e} / {cov:.2e} / {sk:.2e}")


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    main()
