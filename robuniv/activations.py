"""Penultimate features and logits of one model on one input set (SPEC section 4)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from robuniv.log import progress_kwargs
from robuniv.models import RobustModel, features_and_logits

log = logging.getLogger(__name__)


@torch.no_grad()
def extract(
    model: RobustModel,
    images: torch.Tensor,
    *,
    layer: str,
    batch_size: int = 256,
    device: str = "cpu",
    desc: str = "activations",
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N x D) and logits (N x C) of `images` (N x C x H x W in [0, 1]), float32.

    One forward pass per batch yields both, in eval mode.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    model = model.to(device).eval()
    features, logits = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, **progress_kwargs()):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        f, z = features_and_logits(model, batch, layer)
        features.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)


def uint8_to_float(images: np.ndarray) -> torch.Tensor:
    """Stored uint8 images (N, C, H, W) as float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
