"""Penultimate features and logits of one model on one input set (SPEC section 4)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from robuniv.log import progress_kwargs
from robuniv.models import RobustModel, features_and_logits

log = logging.getLogger(__name__)


@torch.no_grad()
def extract(
    model: RobustModel,
    images: Dataset,
    *,
    layer: str,
    batch_size: int = 256,
    device: str = "cpu",
    num_workers: int = 0,
    desc: str = "activations",
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N x D) and logits (N x C) of a dataset of (image in [0, 1], label), float32.

    Streams batches (ImageNet-sized sets do not fit in memory at once); one forward
    pass per batch yields both, in eval mode, in dataset order.
    """
    model = model.to(device).eval()
    loader = DataLoader(
        images,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.startswith("cuda"),
    )
    features, logits = [], []
    for x, _ in tqdm(loader, desc=desc, **progress_kwargs()):
        f, z = features_and_logits(model, x.to(device, non_blocking=True), layer)
        features.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)
