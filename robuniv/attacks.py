"""L2 PGD (SPEC 2) and representation inversion (SPEC 3), in pixel space.

Models take images in [0, 1] and normalise inside (`robuniv.models.RobustModel`), so both
work on raw pixels, as the robustness library's `Attacker` does. Plain torch, no `.cuda()`:
the data's device decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from robuniv.log import progress_kwargs
from robuniv.models import features_and_logits

log = logging.getLogger(__name__)

# Autocast dtype of inversion and feature extraction on every device: bfloat16 keeps float32's
# exponent range, so input gradients need no loss scaling (float16 would underflow them).
AMP_DTYPE = torch.bfloat16

# robustness' L2Step divides by ||g|| + 1e-10: a zero gradient gives a zero step, not NaN.
_GRAD_NORM_EPS = 1e-10


def _per_sample_norm(t: Tensor) -> Tensor:
    """L2 norm of each sample, shaped (N, 1, ..., 1) to broadcast against `t`."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, *([1] * (t.dim() - 1)))


def _normalized(grad: Tensor) -> Tensor:
    return grad / (_per_sample_norm(grad) + _GRAD_NORM_EPS)


@dataclass(frozen=True)
class L2Step:
    """The L2 threat model of radius `eps` (SPEC 2), as robustness' `L2Step`.

    Attributes
    ----------
    eps : float
        Radius of the ball around each clean image, in [0, 1] pixel units.
    step_size : float
        Length of one ascent step.
    """

    eps: float
    step_size: float

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project each sample of `x_adv` (N, ...) onto the eps-ball around `x`, then clamp to [0, 1].

        Clamping after projecting stays in the ball: `x` is in [0, 1], so clamping only
        shortens each coordinate of the difference.
        """
        diff = (x_adv - x).renorm(p=2, dim=0, maxnorm=self.eps)
        return torch.clamp(x + diff, 0, 1)

    def step(self, x_adv: Tensor, grad: Tensor) -> Tensor:
        """`x_adv + step_size * grad / ||grad||_2`, the norm taken per sample (N, ...)."""
        return x_adv + self.step_size * _normalized(grad)


def _pgd(
    model: nn.Module, x: Tensor, y: Tensor, step: L2Step, steps: int, use_best: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(adversarial images, logits of the clean images, logits of the returned images).

    Logits come from the forwards PGD runs anyway (None where it ran none), so callers
    get clean and adversarial predictions without extra passes.
    """
    x = x.detach()
    x_adv = x.clone()
    best_x = best_loss = best_logits = clean_logits = None
    # With use_best one more forward scores the last iterate, as robustness does.
    for i in range(steps + int(use_best)):
        last = i == steps
        with torch.enable_grad() if not last else torch.no_grad():
            x_adv = x_adv.detach().requires_grad_(not last)
            logits = model(x_adv)
            losses = F.cross_entropy(logits, y, reduction="none")
            if not last:
                # Per-sample losses summed: each sample's gradient is its own loss's.
                (grad,) = torch.autograd.grad(losses.sum(), x_adv)
        x_adv = x_adv.detach()
        logits, losses = logits.detach(), losses.detach()
        if i == 0:
            clean_logits = logits
        if use_best:
            if best_x is None:
                best_x, best_loss, best_logits = x_adv.clone(), losses, logits.clone()
            else:
                # Strictly higher: on ties the earlier iterate (the clean image first) stays.
                better = losses > best_loss
                best_x[better], best_logits[better] = x_adv[better], logits[better]
                best_loss = torch.where(better, losses, best_loss)
        if not last:
            x_adv = step.project(step.step(x_adv, grad), x)
    if use_best:
        return best_x, clean_logits, best_logits
    return x_adv, clean_logits, None


def _check_pgd_args(x: Tensor, y: Tensor, eps: float, steps: int) -> None:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if x.dim() < 2 or y.shape != x.shape[:1]:
        raise ValueError(
            f"x must be (N, ...) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def _l2_step(eps: float, step_size: float | None) -> L2Step:
    """The threat model with SPEC 2's default step size, 2/3 * eps."""
    return L2Step(eps=eps, step_size=2 / 3 * eps if step_size is None else step_size)


def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 3,
    step_size: float | None = None,
    use_best: bool = True,
) -> Tensor:
    """Untargeted L2 PGD on the cross-entropy loss, no random start (SPEC 2).

    Runs in whatever mode `model` is in and leaves it so (robustness attacks in eval mode,
    also during training: the caller decides). Gradients are taken with respect to the
    images only, so model parameters get no `.grad`.

    Parameters
    ----------
    model : nn.Module
        Maps images (N, C, H, W) in [0, 1] to logits (N, num_classes).
    x : Tensor
        Clean images (N, C, H, W) in [0, 1].
    y : Tensor
        Labels (N,), int64.
    eps : float
        L2 radius; 0 returns `x` unchanged (standard training).
    steps : int
        Gradient steps.
    step_size : float or None
        None means 2/3 * eps.
    use_best : bool
        Per sample return the iterate with the highest loss among x, x_1, ..., x_steps
        (robustness' `use_best`); else the last iterate.

    Returns
    -------
    Tensor
        Adversarial images (N, C, H, W), detached, within eps of `x` and in [0, 1].
    """
    _check_pgd_args(x, y, eps, steps)
    if eps == 0:
        return x.detach().clone()
    x_adv, _, _ = _pgd(model, x, y, _l2_step(eps, step_size), steps, use_best)
    return x_adv


def pgd_l2_with_logits(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 3,
    step_size: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`pgd_l2` with use_best, plus the logits its forward passes computed anyway (SPEC 2).

    Returns
    -------
    x_adv : Tensor
        (N, C, H, W), as `pgd_l2` returns it.
    clean_logits, adv_logits : Tensor
        (N, num_classes), detached: the model's outputs on `x` and on `x_adv`, in the mode
        the model is in. At eps = 0 one forward without gradients gives both.
    """
    _check_pgd_args(x, y, eps, steps)
    if eps == 0:
        with torch.no_grad():
            logits = model(x)
        return x.detach().clone(), logits, logits
    return _pgd(model, x, y, _l2_step(eps, step_size), steps, use_best=True)


@dataclass(frozen=True)
class InversionResult:
    """Inverted images and their losses (SPEC 3).

    Attributes
    ----------
    images : Tensor
        (N, C, H, W) float32 in [0, 1], on the CPU: per sample the lowest-loss iterate.
    loss : np.ndarray
        (N,) float64, ||f^L(s) - f^L(x)||_2 / ||f^L(x)||_2 of the kept iterate.
    """

    images: Tensor
    loss: np.ndarray


def _relative_distance(features: Tensor, target: Tensor, target_norm: Tensor) -> Tensor:
    return torch.linalg.vector_norm(features - target, dim=1) / target_norm


def invert(
    model: nn.Module,
    seeds: Tensor,
    targets: Tensor,
    *,
    layer: str,
    steps: int = 1000,
    step_size: float = 0.125,
    momentum: float = 0.9,
    batch_size: int = 64,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
) -> InversionResult:
    """Representation inversion: images whose features at `layer` match the targets' (SPEC 3).

    Minimises ||f^L(s) - f^L(x)||_2 / ||f^L(x)||_2 over s, starting at s = seed, with
    normalised-gradient momentum steps  m <- momentum m + (1 - momentum) g / ||g||_2,
    s <- s - step_size m,  then clamp to [0, 1]. One forward and one backward per step, in
    eval mode; per sample the lowest-loss iterate is kept (the seed included, the last
    iterate scored by one extra forward). Batches are independent. The model's mode and its
    parameters' `requires_grad` are restored afterwards; parameters get no `.grad`.

    Parameters
    ----------
    model : RobustModel
        As `robuniv.models.features_and_logits` takes it.
    seeds, targets : Tensor
        (N, C, H, W) in [0, 1]; row i of `seeds` starts the inversion of row i of `targets`.
    layer : str
        Feature layer spec (see `robuniv.models.features_and_logits`).
    steps : int
        Iterations (SPEC 3: 1000; Jones et al. 2000).
    step_size, momentum : float
        SPEC 3: 1/8 and 0.9.
    batch_size : int
        Images inverted together (affects speed only).
    device : str
        Where the model runs; it is moved there.
    amp : bool
        Run the network under bfloat16 autocast (`inference_dtype`); the loss, the
        gradient's normalisation, the momentum and the iterate stay float32.
    channels_last : bool
        Model and images in channels-last memory format (faster convolutions on most
        CPUs and on tensor-core GPUs; same values up to rounding).
    progress : bool
        Show a tqdm bar over batches x steps.

    Returns
    -------
    InversionResult
    """
    if seeds.shape != targets.shape or seeds.dim() != 4:
        raise ValueError(
            f"seeds and targets must both be (N, C, H, W), got {tuple(seeds.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).eval()
    model.requires_grad_(False)
    images, losses = [], []
    bar = tqdm(
        total=-(-len(seeds) // batch_size) * steps,
        desc="inversion",
        disable=not progress,
        **progress_kwargs(),
    )
    try:
        for start in range(0, len(seeds), batch_size):
            seed = seeds[start : start + batch_size].to(device, memory_format=memory_format)
            target = targets[start : start + batch_size].to(device, memory_format=memory_format)
            best_s, best_loss = _invert_batch(
                model, seed, target, layer, steps, step_size, momentum, bar, amp
            )
            images.append(best_s.float().cpu())
            losses.append(best_loss.double().cpu())
    finally:
        bar.close()
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
        model.train(was_training)
    return InversionResult(images=torch.cat(images), loss=torch.cat(losses).numpy())


def _invert_batch(
    model: nn.Module,
    seed: Tensor,
    target: Tensor,
    layer: str,
    steps: int,
    step_size: float,
    momentum: float,
    bar: tqdm,
    amp: bool = False,
) -> tuple[Tensor, Tensor]:
    def features(x: Tensor, low_precision: bool = amp) -> Tensor:
        with torch.autocast(x.device.type, dtype=AMP_DTYPE, enabled=low_precision):
            f = features_and_logits(model, x, layer)[0]
        return f.float()

    def norm(f: Tensor) -> Tensor:
        # A target whose features are all zero would divide by zero; any positive floor
        # keeps the loss finite and does not change the minimiser.
        return torch.linalg.vector_norm(f, dim=1).clamp_min(1e-12)

    with torch.no_grad():
        target_features = features(target)
    target_norm = norm(target_features)
    s = seed.detach().clone()
    m = torch.zeros_like(s)
    best_s, best_loss = s.clone(), None
    for i in range(steps + 1):
        last = i == steps
        with torch.enable_grad() if not last else torch.no_grad():
            s.requires_grad_(not last)
            loss = _relative_distance(features(s), target_features, target_norm)
            if not last:
                (grad,) = torch.autograd.grad(loss.sum(), s)
        s, loss = s.detach(), loss.detach()
        if best_loss is None:
            best_loss = loss
        else:
            better = loss < best_loss
            best_s[better] = s[better]
            best_loss = torch.where(better, loss, best_loss)
        if not last:
            m = momentum * m + (1 - momentum) * _normalized(grad)
            s = torch.clamp(s - step_size * m, 0, 1)
            bar.update()
    if amp:
        # The recorded loss is the study's check that an inversion converged: measure the
        # kept images in float32, so it means the same whatever precision searched for them
        # (bfloat16 features alone carry a rounding error of ~1 % of this loss).
        with torch.no_grad():
            exact_target = features(target, low_precision=False)
            best_loss = _relative_distance(
                features(best_s, low_precision=False), exact_target, norm(exact_target)
            )
    return best_s, best_loss


def to_uint8(images: Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] as uint8, rounded to the nearest level (SPEC 3).

    Rounding, not truncation: truncating shifts every pixel down by half a level on average.
    """
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):
        raise ValueError(
            f"images must lie in [0, 1], got range [{images.min().item()}, {images.max().item()}]"
        )
    return (images.detach().float() * 255).round().to(torch.uint8).cpu().numpy()
