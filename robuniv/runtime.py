"""Per-job torch settings: threads, device, deterministic kernels."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def setup_torch(threads: int, device: str = "auto") -> str:
    """Set threads and deterministic algorithms; resolve "auto" to cuda where a GPU is visible."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    torch.set_num_threads(max(1, int(threads)))
    # Same config, same numbers: deterministic kernels on every device.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    resolved = "cuda" if device == "auto" and torch.cuda.is_available() else device
    if device == "auto" and resolved != "cuda":
        resolved = "cpu"
    if resolved == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU")
    log.info("torch %s on %s with %d threads", torch.__version__, resolved, torch.get_num_threads())
    return resolved
