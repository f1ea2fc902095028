"""The network: a small CNN that takes raw pixels (0..255) and returns class logits."""

from __future__ import annotations

import torch
from torch import nn

MNIST_MEAN = 33.3
MNIST_STD = 78.6


class DigitNet(nn.Module):
    def __init__(self, channels: int = 16, hidden: int = 64, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels * 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels * 2 * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalising inside the graph keeps the served model's input the raw pixels.
        x = (x - MNIST_MEAN) / MNIST_STD
        return self.head(self.features(x))
