"""GMM EM, N = 20k, d = 64, K = 8, 10 iterations from the same start: alignkit against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from conftest import measure

N, D, K, ITERATIONS = 20_000, 64, 8, 10


def cases(full: bool) -> list[tuple[str, str]]:
    return [(cov, impl) for cov in ("diag", "full") for impl in ("alignkit", "sklearn")]


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(K, D))
    x = (centers[rng.integers(0, K, n)] + rng.normal(size=(n, D))).astype(np.float32)
    return x, x[rng.choice(n, K, replace=False)]


def test_gmm_em(benchmark, device, case: tuple[str, str]) -> None:
    covariance_type, impl = case
    n = N if benchmark.enabled else 2_000  # the smoke run only checks that it runs
    benchmark.group = f"GMM EM N={n} d={D} K={K} {ITERATIONS} iterations {covariance_type}"
    x, means = _data(n)
    if impl == "alignkit":
        from alignkit.functional import fit_gmm

        xt, mt = torch.from_numpy(x).to(device), torch.from_numpy(means).to(device)
        start = torch.ones(K, D, device=device) if covariance_type == "diag" else torch.eye(D, device=device).expand(K, D, D)
        fn = lambda: fit_gmm(xt, K, covariance_type=covariance_type, n_iter=ITERATIONS, means_init=mt, covariances_init=start, reg_covar=1e-6)  # noqa: E731
    else:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        precisions = np.ones((K, D)) if covariance_type == "diag" else np.broadcast_to(np.eye(D), (K, D, D)).copy()

        def fn() -> None:
            model = GaussianMixture(K, covariance_type=covariance_type, max_iter=ITERATIONS, tol=0, means_init=means, precisions_init=precisions, init_params="random_from_data", random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(x)

    measure(benchmark, fn, device, rounds=3, N=n, d=D, K=K, impl=impl)
