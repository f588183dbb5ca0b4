"""One function per torch stage of the workflow: config values and paths in, files out.

The workflow scripts are thin adapters around these; they can also be called from
a notebook or another workflow manager.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robuniv import io
from robuniv.activations import extract, extract_layers
from robuniv.attacks import invert, to_uint8
from robuniv.config import ModelKey
from robuniv.data import DATASETS, ImageArrayDataset, load_labels, open_split, sample_indices
from robuniv.groups import REGULAR_GROUP, activation_group, inverted_group, layers_group_of
from robuniv.inputs import inversion_pairs, regular_inputs
from robuniv.layers import check_specs, relative_depths
from robuniv.models import (
    ModelSpec,
    RobustModel,
    build_model,
    count_parameters,
    default_layer,
    load_checkpoint,
)
from robuniv.train import TrainConfig, evaluate_model, train_model

log = logging.getLogger(__name__)

EVALUATION_COLUMNS = ("arch", "run", "eps", "params", "n", "clean_acc", "adv_acc", "attack_eps")


def model_spec(
    arch: str, dataset: str, *, width: float = 1.0, adapt_stem: bool | None = None
) -> ModelSpec:
    """The network a study trains for `arch` on `dataset`: variant and input shape from the data."""
    data = DATASETS.get(dataset)
    return ModelSpec(
        arch=arch,
        num_classes=data.num_classes,
        variant=data.model_variant,
        width=width,
        adapt_stem=adapt_stem,
        in_channels=data.in_channels,
        mean=data.mean,
        std=data.std,
    )


def layer_for(model_spec_: ModelSpec, layers: Mapping[str, str]) -> str:
    """The configured penultimate layer of an architecture, else the registry's."""
    return layers.get(model_spec_.arch) or default_layer(model_spec_)


def run_seed(base_seed: int, run: int) -> int:
    """Training replica `run` uses seed base + run: run 0 is the base seed itself."""
    return int(base_seed) + int(run)


def train_stage(
    *,
    arch: str,
    eps: float,
    run: int,
    model: Mapping[str, Any],
    dataset: Mapping[str, Any],
    train: Mapping[str, Any],
    checkpoint: str | Path,
    device: str,
    provenance: Mapping[str, Any],
) -> None:
    """Adversarially train one (arch, eps, run); resumable from `<checkpoint>.resume`."""
    spec = model_spec(arch, dataset["name"], width=model["width"], adapt_stem=model["adapt_stem"])
    seed = run_seed(train["seed"], run)
    labels = load_labels(dataset["name"], dataset["root"], "train")
    subset = sample_indices(len(labels), train["n_images"], seed=train["seed"])
    train_set = open_split(
        dataset["name"], dataset["root"], "train", indices=subset, augment=train["augment"]
    )
    # Keys the study's train block shares with TrainConfig; absent ones keep its defaults.
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"eps", "seed"}
    config = TrainConfig(
        eps=float(eps), seed=seed, **{k: v for k, v in train.items() if k in fields}
    )
    net = build_model(spec, seed=seed, zero_init_residual=train.get("zero_init_residual", False))
    log.info(
        "training %s (%d parameters) at eps %g, run %d, on %d images",
        arch,
        count_parameters(net),
        eps,
        run,
        len(train_set),
    )
    train_model(
        net,
        train_set,
        config,
        checkpoint=Path(checkpoint),
        resume_state=Path(f"{checkpoint}.resume"),
        device=device,
        extra={
            "provenance": dict(provenance),
            "train_subset_size": len(subset),
            # torchrun's rank count: data-parallel BatchNorm statistics differ from one process's.
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        },
    )


def evaluate_stage(
    *,
    checkpoints: Mapping[ModelKey, str | Path],
    dataset: Mapping[str, Any],
    evaluate: Mapping[str, Any],
    device: str,
) -> pd.DataFrame:
    """Clean and adversarial accuracy of every model given (SPEC 2; eps = 0 models at 0.25).

    The evaluation images are decoded once for all models: one job per eps, not per model.
    """
    labels = load_labels(dataset["name"], dataset["root"], "eval")
    subset = sample_indices(len(labels), evaluate["n_images"], seed=evaluate["seed"])
    eval_set = open_split(dataset["name"], dataset["root"], "eval", indices=subset)
    rows = []
    for key, checkpoint in sorted(checkpoints.items()):
        model, _ = load_checkpoint(checkpoint, map_location=device)
        attack_eps = key.eps if key.eps > 0 else float(evaluate["standard_attack_eps"])
        result = evaluate_model(
            model,
            eval_set,
            eps=attack_eps,
            attack_steps=evaluate["attack_steps"],
            batch_size=evaluate["batch_size"],
            device=device,
        )
        log.info(
            "%s at eps %g: clean %.4f, adversarial %.4f",
            key.name,
            key.eps,
            result["clean_acc"],
            result["adv_acc"],
        )
        rows.append(
            {
                "arch": key.arch,
                "run": key.run,
                "eps": key.eps,
                "params": count_parameters(model),
                "n": result["n"],
                "clean_acc": result["clean_acc"],
                "adv_acc": result["adv_acc"],
                "attack_eps": attack_eps,
            }
        )
    return pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS))


def sample_stage(
    *, dataset: Mapping[str, Any], inputs: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The study's regular-image sample and its inversion pair list (SPEC 3)."""
    labels = load_labels(dataset["name"], dataset["root"], "eval")
    regular = regular_inputs(labels, inputs["n_regular"], seed=inputs["seed"])
    pairs = inversion_pairs(labels, inputs["n_inverted"], seed=inputs["seed"])
    return regular, pairs


# Inversion pairs decoded and inverted at a time: a multiple of every usual batch size.
INVERSION_CHUNK = 1024


def stack_images(dataset: Any, rows: Iterable[int]) -> torch.Tensor:
    """Images `rows` of a dataset of (image, label) as one (N, C, H, W) tensor."""
    return torch.stack([dataset[i][0] for i in rows])


def invert_stage(
    *,
    checkpoint: str | Path,
    pairs: pd.DataFrame,
    dataset: Mapping[str, Any],
    inversion: Mapping[str, Any],
    layers: Mapping[str, str],
    device: str,
    output: str | Path,
    provenance: Mapping[str, Any],
) -> None:
    """Invert the study's target images through one model, starting from their seeds (SPEC 3)."""
    model, _ = load_checkpoint(checkpoint, map_location=device)
    layer = layer_for(model.spec, layers)
    name, root = dataset["name"], dataset["root"]
    # One read of the split serves seeds and targets alike.
    split = open_split(name, root, "eval")
    seed_rows, target_rows = pairs["seed"].to_numpy(), pairs["target"].to_numpy()
    # Chunks bound the memory of decoded images (10,000 ImageNet pairs are 12 GB as float);
    # inversion is per sample, so chunking does not change any result.
    images, losses = [], []
    for start in range(0, len(pairs), INVERSION_CHUNK):
        rows = slice(start, start + INVERSION_CHUNK)
        result = invert(
            model,
            stack_images(split, seed_rows[rows]),
            stack_images(split, target_rows[rows]),
            layer=layer,
            steps=inversion["steps"],
            step_size=inversion["step_size"],
            momentum=inversion["momentum"],
            batch_size=inversion["batch_size"],
            device=device,
            amp=inversion["amp"],
            channels_last=inversion["channels_last"],
        )
        images.append(to_uint8(result.images))
        losses.append(result.loss)
    result_loss = np.concatenate(losses)
    log.info("inversion loss: median %.4f, max %.4f", np.median(result_loss), result_loss.max())
    arrays = {
        "images": np.concatenate(images),
        "target_index": pairs["target"].to_numpy(np.int64),
        "seed_index": pairs["seed"].to_numpy(np.int64),
        "target_label": pairs["target_label"].to_numpy(np.int64),
        "seed_label": pairs["seed_label"].to_numpy(np.int64),
        "loss": result_loss,
    }
    io.write_h5(output, {"/": arrays}, {**provenance, "layer": layer})


def inversion_examples(
    inverted: Mapping[str, str | Path], *, dataset: Mapping[str, Any], n_show: int
) -> dict[str, Any]:
    """Fig 2's images: the first `n_show` seed/target pairs and their inverted versions.

    `inverted` maps a row label (e.g. "resnet18, eps 0") to an inverted-image file; all
    must hold the same pairs (the study's one pair list). Returns uint8 (N, C, H, W)
    arrays "seeds", "targets", "inverted" (label -> array) and the pairs' labels.
    """
    if not inverted:
        raise ValueError("no inverted-image files given")
    stored = {label: io.read_h5(path) for label, path in inverted.items()}
    first_label, first = next(iter(stored.items()))
    for label, arrays in stored.items():
        for key in ("seed_index", "target_index"):
            if not np.array_equal(arrays[key], first[key]):
                raise ValueError(
                    f"{inverted[label]}: its {key} differs from {inverted[first_label]}'s; "
                    "inverted sets of one study share one pair list"
                )
    n = min(int(n_show), len(first["seed_index"]))
    split = open_split(dataset["name"], dataset["root"], "eval")
    return {
        "seeds": to_uint8(stack_images(split, first["seed_index"][:n])),
        "targets": to_uint8(stack_images(split, first["target_index"][:n])),
        "inverted": {label: arrays["images"][:n] for label, arrays in stored.items()},
        "seed_labels": first["seed_label"][:n],
        "target_labels": first["target_label"][:n],
        "class_names": DATASETS.get(dataset["name"]).class_names or None,
    }


def _extract(
    model: RobustModel,
    images: torch.utils.data.Dataset,
    layer: str,
    extraction: Mapping[str, Any],
    device: str,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """`extract` with the config's `activations` block (batch size, amp, channels-last)."""
    return extract(model, images, layer=layer, **_run_options(extraction, device, desc))


def _run_options(extraction: Mapping[str, Any], device: str, desc: str) -> dict[str, Any]:
    return {
        "batch_size": extraction["batch_size"],
        "device": device,
        "amp": extraction["amp"],
        "channels_last": extraction["channels_last"],
        "desc": desc,
    }


def _extract_layers(
    model: RobustModel,
    images: torch.utils.data.Dataset,
    layer: str,
    extra_layers: Sequence[str],
    reduction: str,
    extraction: Mapping[str, Any],
    device: str,
    desc: str,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """`extract_layers` with the config's `activations` block; `_extract` without extras."""
    if not extra_layers:
        return (*_extract(model, images, layer, extraction, device, desc), [])
    return extract_layers(
        model,
        images,
        layer=layer,
        extra_layers=extra_layers,
        reduction=reduction,
        **_run_options(extraction, device, desc),
    )


def _load_models(
    checkpoints: Mapping[ModelKey, str | Path], layers: Mapping[str, str], device: str
) -> dict[ModelKey, tuple[RobustModel, str]]:
    """Every model of a job with its feature layer, loaded once for all its input sets."""
    loaded = {}
    for key, checkpoint in sorted(checkpoints.items()):
        model, _ = load_checkpoint(checkpoint, map_location=device)
        loaded[key] = (model, layer_for(model.spec, layers))
    return loaded


def activations_stage(
    *,
    checkpoints: Mapping[ModelKey, str | Path],
    regular: pd.DataFrame,
    inverted: Mapping[ModelKey, str | Path],
    dataset: Mapping[str, Any],
    extraction: Mapping[str, Any],
    layers: Mapping[str, str],
    device: str,
    output: str | Path,
    provenance: Mapping[str, Any],
    extra_layers: Mapping[str, Sequence[str]] | None = None,
    reduction: str = "avgpool",
) -> None:
    """Features and logits of every model of one eps on the regular images and on every
    inverted set of that eps (SPEC 4), into one HDF5 file.

    Group `activation_group(model, source)` holds one (model, input set) pair. Each input
    set is decoded or read once and passed through every model: one job per eps, so the
    regular images are decoded once, not once per model.

    `extra_layers` (arch -> layer specs) are captured in the same forward pass, reduced by
    `reduction`, into dataset `<group>/layers/<spec>` (attrs: layer, position in the list,
    relative depth). The model group's provenance lists them with every layer's depth.
    """
    models = _load_models(checkpoints, layers, device)
    extra_layers = extra_layers or {}
    extras = {key: list(extra_layers.get(key.arch, [])) for key in models}
    for key, (model, _) in models.items():
        check_specs(model.model, extras[key], key.arch)
    sources: list[tuple[ModelKey | None, Any, np.ndarray, dict[str, Any]]] = [
        (
            None,
            open_split(
                dataset["name"], dataset["root"], "eval", indices=regular["index"].to_numpy()
            ),
            regular["index"].to_numpy(np.int64),
            {"input_set": REGULAR_GROUP},
        )
    ]
    for source, path in sorted(inverted.items()):
        stored = io.read_h5(path)
        sources.append(
            (
                source,
                ImageArrayDataset(stored["images"], stored["target_label"]),
                stored["target_index"],
                {"input_set": inverted_group(source), "inverted_file_sha256": io.sha256_file(path)},
            )
        )
    # Depth is a property of the net, not the data: one image of the regular set measures it.
    one_image = sources[0][1][0][0].unsqueeze(0).to(device)
    depths = {
        key: relative_depths(model, one_image, [layer, *extras[key]])
        for key, (model, layer) in models.items()
    }
    with io.h5_writer(output, provenance) as fh:
        for key, (_, layer) in models.items():
            meta = {"layer": layer, **_checkpoint_meta(checkpoints[key])}
            if extras[key]:
                meta.update(layers=extras[key], layers_reduce=reduction, depths=depths[key])
            io.set_meta(fh.require_group(key.name), meta)
        for source, images, indices, meta in sources:
            for key, (model, layer) in models.items():
                features, logits, extra = _extract_layers(
                    model,
                    images,
                    layer,
                    extras[key],
                    reduction,
                    extraction,
                    device,
                    f"{key.name} on {meta['input_set']}",
                )
                arrays = {
                    "features": features,
                    "logits": logits,
                    "labels": images.labels,
                    "indices": indices,
                }
                group = activation_group(key, source)
                io.write_group(fh, group, arrays, meta)
                if extras[key]:
                    _write_layers(fh, group, extras[key], extra, depths[key], reduction)


def _write_layers(
    fh: Any,
    group: str,
    specs: Sequence[str],
    arrays: Sequence[np.ndarray],
    depths: Mapping[str, float],
    reduction: str,
) -> None:
    """One dataset per extra layer under `<group>/layers`, named by its spec."""
    layers_group = layers_group_of(group)
    io.write_group(fh, layers_group, dict(zip(specs, arrays, strict=True)), {"reduce": reduction})
    for position, spec in enumerate(specs):
        attrs = fh[layers_group][spec].attrs
        attrs["layer"] = spec
        attrs["position"] = position
        attrs["depth"] = float(depths[spec])


def _checkpoint_meta(path: str | Path) -> dict[str, str]:
    return {"checkpoint_sha256": io.sha256_file(path)}


PROBE_TRAIN_GROUP = "train"


def probe_features_stage(
    *,
    checkpoints: Mapping[ModelKey, str | Path],
    dataset: Mapping[str, Any],
    n_train: int | None,
    seed: int,
    extraction: Mapping[str, Any],
    layers: Mapping[str, str],
    device: str,
    output: str | Path,
    provenance: Mapping[str, Any],
) -> None:
    """Penultimate features of a seeded training-split sample for every model of one eps (Fig 6).

    Every model sees the same rows (the sample depends on the seed only); the sample is
    decoded once for all of them. Group `<model>/train` per model.
    """
    models = _load_models(checkpoints, layers, device)
    name, root = dataset["name"], dataset["root"]
    rows = sample_indices(len(load_labels(name, root, "train")), n_train, seed=seed)
    split = open_split(name, root, "train", indices=rows)
    with io.h5_writer(output, provenance) as fh:
        for key, (model, layer) in models.items():
            features, _ = _extract(
                model, split, layer, extraction, device, f"{key.name} on the train split"
            )
            arrays = {"features": features, "labels": split.labels, "indices": rows}
            meta = {"layer": layer, **_checkpoint_meta(checkpoints[key])}
            io.write_group(fh, f"{key.name}/{PROBE_TRAIN_GROUP}", arrays, meta)


def train_probes_stage(
    *,
    models: Sequence[ModelKey],
    features_file: str | Path,
    activations_file: str | Path,
    probe: Mapping[str, Any],
    device: str,
    output: str | Path,
    provenance: Mapping[str, Any],
) -> None:
    """Train each model's probe; store it with its and the classifier's held-out logits.

    Held-out inputs are the study's regular images, whose features and logits the
    activations stage already extracted. Group `<model>` per model.
    """
    from robuniv.probes import ProbeConfig, probe_arrays, train_probe

    config = ProbeConfig.from_mapping(probe)
    with io.h5_writer(output, provenance) as fh:
        for key in sorted(models):
            train = io.read_h5(features_file, f"{key.name}/{PROBE_TRAIN_GROUP}", finite=True)
            heldout = io.read_h5(activations_file, activation_group(key, None), finite=True)
            n_classes = heldout["logits"].shape[1]
            result = train_probe(
                train["features"], train["labels"], config, n_classes=n_classes, device=device
            )
            arrays = {
                **probe_arrays(result),
                "probe_logits": result.logits(heldout["features"]),
                "classifier_logits": heldout["logits"],
                "labels": heldout["labels"],
                "indices": heldout["indices"],
            }
            io.write_group(fh, key.name, arrays, {"best_epoch": result.best_epoch})
