"""Explanation heatmaps: where in a region the model saw evidence for its p(fake).

Method: **gradient x input** on the pixels the model judged, summed over colour channels, absolute,
averaged over each patch of the ViT (``config.patch_size``; 16 px for the shipped model: a 14 x 14
grid per region), and scaled so the largest cell is 1. One forward and one backward pass per region.

Why this and not attention rollout: rollout multiplies attention maps and never looks at the
classifier head, so it shows where the model looks, whatever it concludes (the same map for a real and
a fake reading); it also needs the eager attention path (``output_attentions``), slower than the SDPA
kernel serving uses. The gradient of the fake-minus-real logit is specific to the class being
explained and works with any attention kernel. captum's ``InputXGradient`` computes the same thing;
this module has no dependency beyond torch.

Only torch checkpoints in float32 can be explained (the ONNX runtime and int8 weights have no
gradients): :func:`explainable` says so, and the Judge then reports no heatmap rather than a wrong one.
Pure: no I/O.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from worker.inference.model.classifier import Classifier

Grid = tuple[tuple[float, ...], ...]
# Cells are rounded to this many decimals: a 14 x 14 grid is ~1 kB of JSON.
_DECIMALS = 3
# One backward pass at a time per process: parameters are shared with the scoring thread, and
# autograd.grad never writes their .grad, but each pass holds a forward graph in memory.
_lock = threading.Lock()


def explainable(classifier: Classifier) -> bool:
    """Whether ``classifier`` can be explained (a torch module in float32)."""
    model = classifier.model
    if not isinstance(model, torch.nn.Module) or classifier.int8:
        return False
    return any(p.dtype == torch.float32 for p in model.parameters())


def patch_size(classifier: Classifier) -> int:
    config = getattr(classifier.model, "config", None)
    size = getattr(config, "patch_size", 16)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def heatmap(classifier: Classifier, pixels: torch.Tensor) -> Grid:
    """The heatmap of one preprocessed region ``(3, H, W)``: a grid of (H / patch) x (W / patch) floats
    in [0, 1], 1 where gradient x input of the fake-minus-real logit is largest."""
    if not explainable(classifier):
        raise ValueError(f"model {classifier.version} cannot be explained (ONNX or int8)")
    patch = patch_size(classifier)
    with _lock, torch.enable_grad():
        inputs = pixels.unsqueeze(0).to(classifier.device, torch.float32).requires_grad_(True)
        logits = classifier.model(pixel_values=inputs).logits[0].float()
        target = logits[classifier.fake_index] - logits[classifier.real_index]
        (grad,) = torch.autograd.grad(target, inputs)
    attribution = (grad * inputs.detach()).sum(dim=1, keepdim=True).abs()
    cells = F.avg_pool2d(attribution, kernel_size=patch, stride=patch)[0, 0]
    top = float(cells.max())
    cells = cells / top if top > 0 else cells
    return tuple(tuple(round(float(v), _DECIMALS) for v in row) for row in cells.cpu())


def peak(grid: Grid) -> tuple[int, int]:
    """The (row, column) of the grid's largest cell."""
    best = max((value, r, c) for r, row in enumerate(grid) for c, value in enumerate(row))
    return best[1], best[2]
