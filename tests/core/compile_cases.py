"""The functional losses as scalar functions of their tensor inputs, for the torch.compile checks
(tests/core/test_compile.py) and the graph-break report (benchmarks/compile_report.py).

Iterative solvers run few iterations: inductor compiles the unrolled loop, and each iteration adds
C++ to build (a few seconds each on a cold cache); more iterations would test nothing more."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from alignkit import functional as F


def _inputs() -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(24, 6, generator=generator, dtype=torch.float64) + i for i in range(3)]


def _gmm(xs: list[Tensor]) -> Tensor:
    mixture = F.fit_gmm(xs[0], 3, n_iter=2, init="spaced")
    return mixture.means.square().sum() + mixture.covariances.sum() + mixture.log_likelihood


def _bures(xs: list[Tensor]) -> Tensor:
    return F.bures_wasserstein_cost(xs[0][:4], xs[1][:4].square() + 0.1, xs[2][:5], xs[0][4:9].square() + 0.1).sum()


def _bures_full(xs: list[Tensor]) -> Tensor:
    a = xs[0][:6].T @ xs[0][:6] / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    b = xs[1][:6].T @ xs[1][:6] / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    return F.bures_wasserstein_cost(xs[0][:1], a[None], xs[1][:1], b[None]).sum()


def _sinkhorn(xs: list[Tensor]) -> Tensor:
    cost = torch.cdist(xs[0][:8], xs[1][:8]).square()
    uniform = torch.full((8,), 1 / 8, dtype=torch.float64)
    return F.sinkhorn(cost, uniform, uniform, 0.5, max_iter=10, tol=0.0).value


def _multi_marginal(xs: list[Tensor]) -> Tensor:
    pairwise = {(i, j): torch.cdist(xs[i][:4], xs[j][:4]).square() / 10 for i in range(3) for j in range(i + 1, 3)}
    cost = F.joint_cost_tensor(pairwise)
    marginals = [torch.softmax(x[:4, 0], 0) for x in xs]
    return F.multi_marginal_sinkhorn(cost, marginals, 0.5, max_iter=10, tol=0.0, grad="unrolled").value


def _calibration(xs: list[Tensor]) -> Tensor:
    responsibilities = [torch.softmax(x[:, :3], -1) for x in xs]
    means = [x[:3] for x in xs]
    return F.prototype_calibration_loss(xs, responsibilities, means, matching="index")


CASES: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "decoupling_loss": lambda xs: F.decoupling_loss(xs[:2], [xs[2], xs[0].flip(0)]),
    "moment_matching_loss": lambda xs: F.moment_matching_loss(xs),
    "multimodal_mmd": lambda xs: F.multimodal_mmd(xs, 1.5),
    "multimodal_mmd (median)": lambda xs: F.multimodal_mmd(xs, "median"),
    "fit_gmm": _gmm,
    "bures_wasserstein_cost (diag)": _bures,
    "bures_wasserstein_cost (full)": _bures_full,
    "sinkhorn": _sinkhorn,
    "multi_marginal_sinkhorn": _multi_marginal,
    "prototype_calibration_loss": _calibration,
}


def inputs() -> list[Tensor]:
    return [x.clone().requires_grad_(True) for x in _inputs()]
