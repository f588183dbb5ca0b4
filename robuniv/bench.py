"""Measure per-unit costs on the machine at hand, to price a study before submitting it.

    python -m robuniv.bench steps --arch resnet50 --size 224 --batch 32 --device cpu
    python -m robuniv.bench networks --configfile experiments/paper.yaml --json bench.json
    python -m robuniv.bench similarity --n 10000 --json bench.json

`steps` times one adversarial training step and one inversion step of one network.
`networks` times, for every network a config trains, inverts or evaluates (architecture x
image size x classes x width x stem), the seconds per unit of each torch stage: a
training image with 3-step PGD and without, an inversion image-step, a PGD-evaluated
image, a forward image. `similarity` times the similarity stage (see
`robuniv.bench_similarity`). `--json FILE` merges the numbers into FILE, which
`python -m robuniv.plan --bench FILE` turns into hours per rule. Times are medians over
repeats after one warm-up; run on an idle machine (on a GPU node for GPU-hours).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robuniv.attacks import AMP_DTYPE, invert, pgd_l2, pgd_l2_with_logits
from robuniv.models import ModelSpec, build_model, default_layer

log = logging.getLogger(__name__)


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


def time_network(
    spec: ModelSpec,
    *,
    size: int,
    batch: int = 32,
    eps: float = 3.0,
    attack_steps: int = 3,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per unit of every torch stage for one network at `batch` images.

    Returns train_pgd_s_per_image (3-step PGD + SGD step), train_clean_s_per_image (eps 0),
    inversion_s_per_image_step, evaluate_s_per_image (PGD evaluation: attack + clean
    logits), forward_s_per_image (feature extraction).
    """
    model = build_model(spec, seed=0).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.rand(batch, spec.in_channels, size, size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")

    def train_step(attack_eps: float) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(device, dtype=train_dtype, enabled=amp):
                x_in = x
                if attack_eps > 0:
                    model.eval()
                    x_in = pgd_l2(model, x, y, eps=attack_eps, steps=attack_steps)
                model.train()
                loss = F.cross_entropy(model(x_in).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        return run

    def inversion(steps: int) -> Callable[[], None]:
        def run() -> None:
            invert(
                model,
                x,
                x.flip(0),
                layer=default_layer(spec),
                steps=steps,
                batch_size=batch,
                device=device,
                amp=amp,
                channels_last=channels_last,
                progress=False,
            )

        return run

    def evaluate() -> None:
        model.eval()
        pgd_l2_with_logits(model, x, y, eps=eps, steps=attack_steps)

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        with torch.autocast(device, dtype=AMP_DTYPE, enabled=amp):
            model(x)

    per_batch = {
        "train_pgd_s_per_image": _median_time(train_step(eps), repeats, device),
        "train_clean_s_per_image": _median_time(train_step(0.0), repeats, device),
        # invert() also embeds the targets and scores its last iterate once: the difference
        # of a 3-step and a 1-step run isolates the cost of one step.
        "inversion_s_per_image_step": (
            _median_time(inversion(3), repeats, device)
            - _median_time(inversion(1), repeats, device)
        )
        / 2,
        "evaluate_s_per_image": _median_time(evaluate, repeats, device),
        "forward_s_per_image": _median_time(forward, repeats, device),
    }
    return {name: max(seconds, 0.0) / batch for name, seconds in per_batch.items()}


def network_key(spec: ModelSpec, size: int) -> str:
    """The name of a measured network in the bench JSON: what its cost depends on.

    The number of classes is left out: it only sizes the last linear layer, a negligible
    share of any of these networks' work.
    """
    stem = "adapted" if spec.stem_adapted else "imagenet"
    return f"{spec.arch}@{size}x{size}x{spec.in_channels}/w{spec.width:g}/{stem}/{spec.variant}"


def config_networks(config: Mapping[str, Any]) -> dict[str, tuple[ModelSpec, int]]:
    """Every network a (validated) config's studies run, by `network_key`."""
    from robuniv.config import adapt_stem_for
    from robuniv.data import DATASETS
    from robuniv.pipeline import model_spec

    networks = {}
    for study in config["studies"].values():
        data = DATASETS.get(study["dataset"]["name"])
        for arch in study["archs"]:
            spec = model_spec(
                arch,
                data.name,
                width=study["model"]["width"],
                adapt_stem=adapt_stem_for(study["model"], arch),
            )
            networks[network_key(spec, data.image_size)] = (spec, data.image_size)
    return networks


def time_probe(*, n: int = 4096, features: int = 2048, classes: int = 1000) -> float:
    """Seconds per sample-epoch of a linear probe (Adam, batch 1024) on `features` inputs."""
    from robuniv.probes import ProbeConfig, train_probe

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, features), dtype=np.float32)
    y = rng.integers(0, classes, size=n)
    config = ProbeConfig(epochs=2, batch_size=1024)
    start = time.perf_counter()
    train_probe(x, y, config, n_classes=classes)
    return (time.perf_counter() - start) / (n * config.epochs)


def time_rtd(*, batch: int = 500, barcodes: int = 6, seed: int = 0) -> dict[str, float]:
    """Seconds per RTD barcode (one direction of one trial) on synthetic post-ReLU features."""
    from robuniv.rtd import h1_total, normalised_distances

    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((batch, 64))
    times = []
    for i in range(barcodes // 2):
        x, y = (
            np.maximum(latent @ rng.standard_normal((64, d)) + rng.standard_normal((batch, d)), 0)
            for d in (512, 2048)
        )
        a, b = normalised_distances(x, "X"), normalised_distances(y, "Y")
        for first, second in ((a, b), (b, a)):
            start = time.perf_counter()
            h1_total(first, second)
            times.append(time.perf_counter() - start)
    return {
        "batch": batch,
        "seconds_per_barcode": statistics.median(times),
        "max_seconds_per_barcode": max(times),
    }


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def merge_json(path: str | Path, section: str, value: Any) -> None:
    """Set `section` of the bench JSON at `path` (created if missing), atomically."""
    from robuniv.io import read_json, write_json

    path = Path(path)
    data = read_json(path) if path.exists() else {}
    data[section] = value
    write_json(path, data)


def _steps_main(args: argparse.Namespace) -> None:
    spec = ModelSpec(args.arch, num_classes=1000)
    result = time_network(
        spec,
        size=args.size,
        batch=args.batch,
        eps=args.eps,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        repeats=args.repeats,
    )
    print(json.dumps({**vars(args), **result}, default=str))


def _networks_main(args: argparse.Namespace) -> None:
    from robuniv.plan import load_config

    config = load_config(args.configfile)
    torch.set_num_threads(args.threads)
    measured = {}
    for key, (spec, size) in sorted(config_networks(config).items()):
        batch = args.batch or (2 if args.device == "cpu" and size > 64 else 32)
        start = time.perf_counter()
        measured[key] = time_network(
            spec,
            size=size,
            batch=batch,
            device=args.device,
            amp=args.amp,
            channels_last=args.channels_last,
            repeats=args.repeats,
        )
        measured[key]["batch"] = batch
        print(
            f"{key}: "
            + ", ".join(f"{k} {v:.3g}" for k, v in measured[key].items())
            + f"  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    probe = time_probe()
    print(f"linear probe: {probe:.3g} s per sample-epoch (2048 features, 1000 classes)")
    if args.json:
        merge_json(
            args.json,
            "networks",
            {
                "threads": args.threads,
                "probe_s_per_sample_epoch": probe,
                "device": args.device,
                "device_name": device_name(args.device),
                "amp": args.amp,
                "channels_last": args.channels_last,
                "torch": torch.__version__,
                "per_network": measured,
            },
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m robuniv.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    steps = sub.add_parser("steps", help="one training and one inversion step of one network")
    steps.add_argument("--arch", default="resnet50")
    steps.add_argument("--size", type=int, default=224)
    steps.add_argument("--batch", type=int, default=32)
    steps.add_argument("--eps", type=float, default=3.0)
    networks = sub.add_parser("networks", help="per-unit costs of every network of a config")
    networks.add_argument("--configfile", required=True)
    networks.add_argument("--batch", type=int, default=None, help="default: 32 (2 on CPU at 224)")
    networks.add_argument("--threads", type=int, default=torch.get_num_threads())
    networks.add_argument("--json", help="merge the results into this bench file")
    for command in (steps, networks):
        command.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        command.add_argument("--amp", action="store_true")
        command.add_argument("--channels-last", action="store_true")
        command.add_argument("--repeats", type=int, default=3)
    rtd = sub.add_parser("rtd", help="seconds per RTD barcode at a batch size")
    rtd.add_argument("--batch", type=int, default=500)
    rtd.add_argument("--barcodes", type=int, default=6)
    rtd.add_argument("--json", help="merge the results into this bench file")
    similarity = sub.add_parser(
        "similarity", help="the similarity stage against a recompute-per-pair baseline"
    )
    similarity.add_argument("options", nargs="*", help="see python -m robuniv.bench_similarity -h")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["similarity"]:
        # Its options belong to robuniv.bench_similarity's own parser.
        from robuniv.bench_similarity import main as similarity_main

        similarity_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "networks":
        _networks_main(args)
    elif args.command == "rtd":
        result = time_rtd(batch=args.batch, barcodes=args.barcodes)
        print(json.dumps(result))
        if args.json:
            merge_json(args.json, "rtd", result)
    else:
        _steps_main(args)


if __name__ == "__main__":
    main()
