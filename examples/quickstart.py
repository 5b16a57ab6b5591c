"""Quickstart: every alignkit loss between the six views of the shipped UCI Multiple Features data.

Each view (Fourier, profile, Karhunen-Loeve, pixel, Zernike, morphological features of the same
2,000 handwritten digits) is projected by PCA to a common width, Gaussian-mixture prototypes are
fitted per view, and the DecAlign losses are computed between views:

    python examples/quickstart.py
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

import alignkit
from alignkit import functional as F
from alignkit_models.data import load_uci_mfeat

WIDTH = 8  # common feature width after PCA
N_COMPONENTS = 10  # one prototype per digit class, ideally


def pca(x: torch.Tensor, width: int) -> torch.Tensor:
    """Whitened principal components of one standardized view: ``(N, d) -> (N, width)``."""
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    variances, directions = torch.linalg.eigh(x.T @ x / (x.shape[0] - 1))  # ascending order
    k = min(width, x.shape[1])
    z = x @ directions[:, -k:].flip(1) / variances[-k:].flip(0).clamp_min(1e-6).sqrt()
    return torch.nn.functional.pad(z, (0, width - k))  # the 6-D view is zero-padded


def purity(responsibilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose prototype's majority digit is their own digit."""
    assignment = responsibilities.argmax(1)
    correct = 0
    for k in assignment.unique():
        members = labels[assignment == k]
        correct += int(members.bincount().max())
    return correct / len(labels)


def main() -> None:
    start = time.perf_counter()
    data = load_uci_mfeat()
    labels = torch.from_numpy(data.labels)
    views = {name: pca(torch.from_numpy(array), WIDTH) for name, array in data.views.items()}
    names = list(views)
    feats = [views[n] for n in names]
    print(f"UCI Multiple Features: {len(labels)} digits, views {names}, PCA width {WIDTH}\n")

    mixtures = [F.fit_gmm(x, N_COMPONENTS, n_iter=30, seed=0) for x in feats]
    print("Gaussian-mixture prototypes per view (K = 10, diagonal covariances, 30 EM steps)")
    for name, mixture in zip(names, mixtures):
        print(f"  {name}: mean log-likelihood {float(mixture.log_likelihood):8.3f}   digit purity {purity(mixture.responsibilities, labels):.3f}")

    print("\nPairwise losses between views")
    print(f"  {'pair':9s} {'W2^2 OT':>9s} {'MMD^2':>8s} {'L_sem':>8s}")
    for i, j in itertools.combinations(range(len(names)), 2):
        cost = F.bures_wasserstein_cost(mixtures[i].means, mixtures[i].covariances, mixtures[j].means, mixtures[j].covariances)
        ot = F.sinkhorn(cost, mixtures[i].weights, mixtures[j].weights, epsilon=0.05 * float(cost.mean()))
        mmd = F.gaussian_mmd(feats[i], feats[j], "median")
        sem = F.moment_matching_loss([feats[i], feats[j]])
        print(f"  {names[i]}-{names[j]:5s} {float(ot.value):9.3f} {float(mmd):8.4f} {float(sem):8.3f}")

    pairwise = {
        (i, j): F.bures_wasserstein_cost(mixtures[i].means, mixtures[i].covariances, mixtures[j].means, mixtures[j].covariances)
        for i, j in itertools.combinations(range(len(names)), 2)
    }
    joint = F.joint_cost_tensor(pairwise)
    # float32 sums over a million entries carry ~1e-6 round-off: ask for what float32 can certify.
    result = F.multi_marginal_sinkhorn(joint, [m.weights for m in mixtures], epsilon=0.05 * float(joint.mean()), tol=1e-5)
    proto = F.prototype_calibration_loss(feats, [m.responsibilities for m in mixtures], [m.means for m in mixtures], plan=result.plan)
    print(f"\nAll six views at once (joint cost tensor {tuple(joint.shape)}, {joint.numel():,} entries)")
    print(f"  multi-marginal OT cost L_OT      {float(result.value):9.3f}  (converged={result.converged}, {result.n_iter} sweeps)")
    print(f"  prototype calibration L_proto    {float(proto):9.3f}")
    print(f"  moment matching L_sem            {float(F.moment_matching_loss(feats)):9.3f}")
    print(f"  multimodal MMD L_MMD (median)    {float(F.multimodal_mmd(feats, 'median')):9.4f}")

    # The composite objective on a toy split of each view: the leading half of its principal
    # components plays the "unique" features, the trailing half the "common" ones.
    half = WIDTH // 2
    unique, common = [x[:, :half] for x in feats], [x[:, half:] for x in feats]
    loss = alignkit.DecAlignLoss(
        len(feats),
        heterogeneity=alignkit.HeterogeneityLoss(len(feats), prototypes=alignkit.GMMPrototypes(N_COMPONENTS)),
        homogeneity=alignkit.HomogeneityLoss(mmd=alignkit.MMDLoss(sigma="median")),
    )
    out = loss(unique, common)
    print("\nDecAlignLoss on a toy unique/common split (alpha = beta = 0.05)")
    print(f"  total {float(out.total):.3f}: " + ", ".join(f"{k} {float(v):.3f}" for k, v in out.components.items()))
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
