"""Penultimate features and logits of one model on one input set (SPEC section 4), and the
activations of further layers from the same forward pass."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from robuniv.attacks import AMP_DTYPE
from robuniv.layers import capture, reduce
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


@torch.no_grad()
def extract_layers(
    model: RobustModel,
    images: Dataset,
    *,
    layer: str,
    extra_layers: Sequence[str],
    reduction: str = "avgpool",
    batch_size: int = 256,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    desc: str = "activations",
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """`extract` plus each of `extra_layers` (N x D each, reduced by `reduction`), one pass.

    The feature layer stays flattened as `extract` gives it (inversion and probes use that
    form); only the extra layers are reduced.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    loader = DataLoader(
        images, batch_size=batch_size, shuffle=False, pin_memory=device.startswith("cuda")
    )
    features, logits = [], []
    extras: list[list[np.ndarray]] = [[] for _ in extra_layers]
    for x, _ in tqdm(loader, desc=desc, **progress_kwargs()):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        with torch.autocast(x.device.type, dtype=AMP_DTYPE, enabled=amp):
            captured, z = capture(model, x, [layer, *extra_layers])
        features.append(captured[0].flatten(1).float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
        for store, tensor in zip(extras, captured[1:], strict=True):
            store.append(reduce(tensor.float(), reduction).cpu().numpy())
    return (
        np.concatenate(features),
        np.concatenate(logits),
        [np.concatenate(store) for store in extras],
    )
