"""Penultimate features and logits of one model on one input set (SPEC section 4)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from robuniv.attacks import AMP_DTYPE
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
    amp: bool = False,
    channels_last: bool = False,
    desc: str = "activations",
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N x D) and logits (N x C) of a dataset of (image in [0, 1], label), float32.

    Streams batches (ImageNet-sized sets do not fit in memory at once); one forward
    pass per batch yields both, in eval mode, in dataset order. `amp` runs the network under
    bfloat16 autocast (results stored as float32), `channels_last` in that memory format.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    loader = DataLoader(
        images,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.startswith("cuda"),
    )
    features, logits = [], []
    for x, _ in tqdm(loader, desc=desc, **progress_kwargs()):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        with torch.autocast(x.device.type, dtype=AMP_DTYPE, enabled=amp):
            f, z = features_and_logits(model, x, layer)
        features.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)
