"""Train ``ea_segnet_tiny`` on the synthetic shapes task on the CPU (< 2 minutes) and save its weights.

    python scripts/train_tiny_seg.py [--steps 2500] [--out src/effattn/models/weights/ea_segnet_tiny.safetensors]

The weights ship with effattn so tests and the demo check numerics on a *trained* network.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from effattn.models import create_model
from effattn.models.synthetic import CLASSES, shapes_batch


def evaluate(model: torch.nn.Module, seed: int = 1234, batches: int = 4) -> tuple[float, list[float]]:
    """Pixel accuracy and per-class IoU on held-out synthetic images."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    hits = total = 0
    inter = torch.zeros(len(CLASSES))
    union = torch.zeros(len(CLASSES))
    with torch.no_grad():
        for _ in range(batches):
            x, y = shapes_batch(16, 64, 64, g)
            pred = model(x).argmax(1)
            hits += (pred == y).sum().item()
            total += y.numel()
            for c in range(len(CLASSES)):
                inter[c] += ((pred == c) & (y == c)).sum()
                union[c] += ((pred == c) | (y == c)).sum()
    return hits / total, (inter / union.clamp(min=1)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("src/effattn/models/weights/ea_segnet_tiny.safetensors"))
    args = parser.parse_args()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = create_model("ea_segnet_tiny").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=args.steps)
    weights = torch.tensor([0.5, 1.5, 1.5])  # objects are rarer than background
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = shapes_batch(args.batch, 64, 64, g)
        loss = F.cross_entropy(model(x), y, weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    accuracy, iou = evaluate(model)
    print(
        f"held-out pixel accuracy {accuracy:.4f}; IoU "
        + ", ".join(f"{c} {v:.3f}" for c, v in zip(CLASSES, iou))
        + f"; trained in {time.perf_counter() - start:.0f}s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.eval().state_dict().items()}
    save_file(
        state,
        str(args.out),
        metadata={"task": "synthetic shapes", "steps": str(args.steps), "pixel_accuracy": f"{accuracy:.4f}"},
    )
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
