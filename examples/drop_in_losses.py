"""Add alignkit losses to your own two-tower model (two views of the shipped UCI digits).

    python examples/drop_in_losses.py [--epochs 5] [--seed 0]

Two small towers embed the Fourier and Karhunen-Loeve views; an MMD term aligns the two
embeddings' distributions and a moment-matching term their mean, covariance and skewness, added
to the classification loss with plain weights. Seeded: two runs print the same numbers.
"""

import argparse

import torch
from torch import nn

import alignkit
from alignkit_models.data import uci_mfeat_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)  # the towers' initialisation and the batch order

    data = uci_mfeat_dataset()
    x_a = torch.from_numpy(data.train.features["fou"][:, 0])  # Fourier view, (1400, 76)
    x_b = torch.from_numpy(data.train.features["kar"][:, 0])  # Karhunen-Loeve view, (1400, 64)
    labels = torch.from_numpy(data.train.labels)

    tower_a, tower_b = nn.Sequential(nn.Linear(76, 32), nn.ReLU()), nn.Sequential(nn.Linear(64, 32), nn.ReLU())
    head = nn.Linear(64, 10)
    mmd = alignkit.MMDLoss(sigma="median")  # align the two embeddings' distributions
    moments = alignkit.MomentMatchingLoss()  # and their mean / covariance / skewness
    parameters = [*tower_a.parameters(), *tower_b.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)

    for epoch in range(args.epochs):
        for rows in torch.randperm(len(labels)).split(64):
            z_a, z_b = tower_a(x_a[rows]), tower_b(x_b[rows])
            task = nn.functional.cross_entropy(head(torch.cat([z_a, z_b], 1)), labels[rows])
            loss = task + 0.1 * mmd([z_a, z_b]) + 0.01 * moments([z_a, z_b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: task {task.item():.3f}  mmd {mmd([z_a, z_b]).item():.4f}")


if __name__ == "__main__":
    main()
