"""Add alignkit losses to your own two-tower model (two views of the shipped UCI digits)."""

import torch
from torch import nn

import alignkit
from alignkit_models.data import uci_mfeat_dataset

data = uci_mfeat_dataset()
x_a = torch.from_numpy(data.train.features["fou"][:, 0])  # Fourier view, (1400, 76)
x_b = torch.from_numpy(data.train.features["kar"][:, 0])  # Karhunen-Loeve view, (1400, 64)
labels = torch.from_numpy(data.train.labels)

tower_a, tower_b = nn.Sequential(nn.Linear(76, 32), nn.ReLU()), nn.Sequential(nn.Linear(64, 32), nn.ReLU())
head = nn.Linear(64, 10)
mmd = alignkit.MMDLoss(sigma="median")                       # align the two embeddings' distributions
moments = alignkit.MomentMatchingLoss()                      # and their mean / covariance / skewness
parameters = [*tower_a.parameters(), *tower_b.parameters(), *head.parameters()]
optimizer = torch.optim.Adam(parameters, lr=1e-3)

for epoch in range(5):
    for rows in torch.randperm(len(labels)).split(64):
        z_a, z_b = tower_a(x_a[rows]), tower_b(x_b[rows])
        task = nn.functional.cross_entropy(head(torch.cat([z_a, z_b], 1)), labels[rows])
        loss = task + 0.1 * mmd([z_a, z_b]) + 0.01 * moments([z_a, z_b])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: task {task.item():.3f}  mmd {mmd([z_a, z_b]).item():.4f}")
