"""Time one adversarial training step and one inversion step, to size a study's compute.

    python -m robuniv.bench --arch resnet50 --size 224 --batch 32 --device cpu
    python -m robuniv.bench --arch resnet50 --size 224 --batch 256 --device cuda --amp --channels-last

Times are medians over repeats after one warm-up step; the estimate scales them to a
study (images x epochs, or pairs x inversion steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from robuniv.attacks import invert, pgd_l2
from robuniv.models import ModelSpec, build_model, default_layer


def _median_time(step: Callable[[], None], repeats: int, device: str) -> float:
    step()  # warm-up: allocator, cuDNN autotuning, lazy init
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_steps(
    arch: str,
    *,
    size: int = 224,
    batch: int = 32,
    eps: float = 3.0,
    attack_steps: int = 3,
    num_classes: int = 1000,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per training step (PGD + SGD update) and per inversion step at `batch` images."""
    spec = ModelSpec(arch, num_classes=num_classes)
    model = build_model(spec, seed=0).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.rand(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")

    def train_step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=amp):
            model.eval()
            x_adv = pgd_l2(model, x, y, eps=eps, steps=attack_steps)
            model.train()
            loss = F.cross_entropy(model(x_adv).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def inversion(steps: int) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(device, dtype=dtype, enabled=amp):
                invert(
                    model,
                    x,
                    x.flip(0),
                    layer=default_layer(spec),
                    steps=steps,
                    batch_size=batch,
                    device=device,
                    progress=False,
                )

        return run

    train_s = _median_time(train_step, repeats, device)
    # invert() also embeds the targets and scores its last iterate once: the difference
    # of a 3-step and a 1-step run isolates the cost of one step.
    invert_s = (
        _median_time(inversion(3), repeats, device) - _median_time(inversion(1), repeats, device)
    ) / 2
    return {"train_step_s": train_s, "inversion_step_s": invert_s, "batch": batch}


def _main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m robuniv.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eps", type=float, default=3.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = time_steps(
        args.arch,
        size=args.size,
        batch=args.batch,
        eps=args.eps,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        repeats=args.repeats,
    )
    print(json.dumps({**vars(args), **result}))


if __name__ == "__main__":
    _main()
