"""Triton kernels run through Triton's interpreter on the CPU when no CUDA device exists (set before import)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
