"""The DecAlign objective on a MOSI-shaped batch, against the network's own forward + backward.

B = 32, T = 50, d = 64, three modalities (MOSI preset: 8 heads, 5 layers, K = 7). The alignment
terms should cost a small share of a training step (target: at most 25%).
"""

from __future__ import annotations

import torch
from conftest import measure

B, T, D = 32, 50, 64
MOSI_DIMS = {"text": 768, "audio": 5, "vision": 20}


def cases(full: bool) -> list[str]:
    return ["decalign-loss", "network-with-loss", "network-without-loss"]


def _network(device: torch.device, with_loss: bool):
    from alignkit_models.registry import create_model

    model = create_model("decalign", input_dims=MOSI_DIMS, dim=D, n_heads=8, n_layers=5, n_components=7).to(device).train()
    if not with_loss:
        model.alignment.use_decoupling = model.alignment.use_hete = model.alignment.use_homo = False
    g = torch.Generator().manual_seed(0)
    features = {m: torch.randn(B, T, d, generator=g).to(device) for m, d in MOSI_DIMS.items()}
    labels = (torch.rand(B, generator=g) * 6 - 3).to(device)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        model.loss(model(features, None, labels), labels).total.backward()

    return run


def _loss(device: torch.device):
    import alignkit

    loss = alignkit.DecAlignLoss(
        3,
        heterogeneity=alignkit.HeterogeneityLoss(3, prototypes=alignkit.GMMPrototypes(7, n_iter=3, grad="last_step", momentum=0.1)),
        homogeneity=alignkit.HomogeneityLoss(mmd=alignkit.MMDLoss(sigma="median")),
    ).to(device)
    g = torch.Generator().manual_seed(1)
    unique = [torch.randn(B, T, D, generator=g).to(device).requires_grad_(True) for _ in range(3)]
    common = [torch.randn(B, T, D, generator=g).to(device).requires_grad_(True) for _ in range(3)]

    def run() -> None:
        total = loss(unique, common).total
        torch.autograd.grad(total, unique + common)

    return run


def test_decalign_step(benchmark, device, case: str) -> None:
    benchmark.group = f"DecAlign on a MOSI-shaped batch B={B} T={T} d={D}, fwd+bwd"
    fn = _loss(device) if case == "decalign-loss" else _network(device, with_loss=case == "network-with-loss")
    measure(benchmark, fn, device, rounds=10, impl=case)
