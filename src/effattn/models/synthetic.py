"""A synthetic segmentation task (disks and squares on textured backgrounds) for the shipped weights.

Trained weights expose numerical problems that random weights hide (sharp softmaxes, large
activations), and the task gives a task-level check: the engine's argmax must match eager's.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLASSES = ("background", "disk", "square")


def shapes_batch(
    batch: int, height: int, width: int, generator: torch.Generator | None = None, max_objects: int = 4
) -> tuple[Tensor, Tensor]:
    """Images ``(N, 3, H, W)`` float32 in about [-1, 1] and labels ``(N, H, W)`` int64 in ``CLASSES``."""
    g = generator

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    yy = torch.linspace(0, 1, height).view(1, height, 1)
    xx = torch.linspace(0, 1, width).view(1, 1, width)
    # background: a random colour gradient plus noise, so colour alone does not give the class
    images = (rand(batch, 3, 1, 1) * yy.unsqueeze(1) + rand(batch, 3, 1, 1) * xx.unsqueeze(1)) * 0.8
    images = images + 0.15 * torch.randn(batch, 3, height, width, generator=g)
    labels = torch.zeros(batch, height, width, dtype=torch.int64)
    for _ in range(max_objects):
        present = rand(batch, 1, 1) < 0.8
        cy, cx = rand(batch, 1, 1), rand(batch, 1, 1)
        radius = 0.08 + 0.17 * rand(batch, 1, 1)
        is_disk = rand(batch, 1, 1) < 0.5
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        square = ((yy - cy).abs() <= radius * 0.85) & ((xx - cx).abs() <= radius * 0.85)
        mask = torch.where(is_disk, disk, square) & present
        colour = rand(batch, 3, 1, 1) * 1.2 - 0.1
        images = torch.where(
            mask.unsqueeze(1), colour + 0.1 * torch.randn(batch, 3, height, width, generator=g), images
        )
        labels = torch.where(mask, torch.where(is_disk, 1, 2), labels)
    return (images * 2 - 1).float(), labels


def images(batch: int, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
    """Task images alone, for parity checks on the data the shipped weights were trained on."""
    return shapes_batch(batch, height, width, generator)[0]
