"""Study configuration helpers shared by the workflow and the tests (no torch).

The JSON schema (rules/schemas/config.schema.yaml) checks types and names; this
module checks what a schema cannot: relations between values and files on disk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robuniv.data import DatasetError, check_root


class ConfigError(ValueError):
    """A configuration value that would make a job fail later."""


def format_eps(eps: float) -> str:
    """The one spelling of eps in paths and wildcards: 0, 0.25, 0.5, 1, 3."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps):
        raise ConfigError(f"eps must be a finite number, got {eps!r}")
    return f"{float(eps):g}"


@dataclass(frozen=True, order=True)
class ModelKey:
    """One trained model of a study: architecture, robustness level, replica."""

    arch: str
    eps: float
    run: int

    @property
    def name(self) -> str:
        """Group name used for this model's inverted set inside activation files."""
        return f"{self.arch}/run{self.run}"


def model_keys(rows: Iterable[Sequence[Any]]) -> list[ModelKey]:
    """ModelKeys from [arch, eps, run] rows, the form rule params carry them in."""
    return [ModelKey(str(arch), float(eps), int(run)) for arch, eps, run in rows]


# Leading columns of every per-pair table (similarity subsets, probes, agreement bounds).
PAIR_COLUMNS = ("study", "eps", "model_a", "run_a", "model_b", "run_b")


def pair_record(study: str, a: ModelKey, b: ModelKey) -> dict[str, Any]:
    """The `PAIR_COLUMNS` values of the pair (a, b), both at one eps."""
    return {
        "study": study,
        "eps": float(a.eps),
        "model_a": a.arch,
        "run_a": a.run,
        "model_b": b.arch,
        "run_b": b.run,
    }


def same_eps_pairs(models: Iterable[ModelKey]) -> list[tuple[ModelKey, ModelKey]]:
    """Every unordered pair of models at the same eps, in sorted order."""
    ordered = sorted(models)
    return [
        (a, b)
        for i, a in enumerate(ordered)
        for b in ordered[i + 1 :]
        if math.isclose(a.eps, b.eps)
    ]


def adapt_stem_for(model: Mapping[str, Any], arch: str) -> bool | None:
    """The study's stem choice for one architecture: one value for all, or per arch."""
    choice = model.get("adapt_stem")
    return choice.get(arch) if isinstance(choice, Mapping) else choice


# `models:` entries whose checkpoint the rule load_model makes (robuniv.zoo), as opposed to
# `train` (trained like `archs`) and `salman2020` (imported like `checkpoints.source`).
LOADED_SOURCES = ("robustbench", "timm", "torchvision", "file")


def entry_key(entry: Mapping[str, Any]) -> ModelKey:
    """The model a `models:` entry adds: trained and imported ones by their architecture,
    loaded ones by their id (run 0)."""
    if entry["source"] in LOADED_SOURCES:
        return ModelKey(str(entry["id"]), float(entry["eps"]), 0)
    return ModelKey(str(entry["arch"]), float(entry["eps"]), int(entry.get("run", 0)))


def study_models(study: Mapping[str, Any]) -> list[ModelKey]:
    """Every (arch, eps, run) of a study, in config order: the `archs` x `eps` x `runs` grid,
    then the `models:` entries (a loaded model's id stands in for its architecture).

    `eps_per_arch` restricts an architecture to some of the study's eps (e.g. models
    released only at eps 0 and 3).
    """
    only = study.get("eps_per_arch", {})
    grid = [
        ModelKey(arch, float(eps), int(run))
        for eps in study["eps"]
        for arch in study.get("archs", [])
        if arch not in only or any(math.isclose(float(eps), float(e)) for e in only[arch])
        for run in study.get("runs", [0])
    ]
    return list(dict.fromkeys([*grid, *(entry_key(e) for e in study.get("models", []))]))


def model_names(study: Mapping[str, Any]) -> list[str]:
    """The names models go by in tables and figures (architectures and loaded ids), in
    config order."""
    return unique(m.arch for m in study_models(study))


def loaded_entry(study: Mapping[str, Any], model: ModelKey) -> Mapping[str, Any] | None:
    """The `models:` entry the rule load_model makes `model` from, if any."""
    for entry in study.get("models", []):
        if entry["source"] in LOADED_SOURCES and entry_key(entry) == model:
            return entry
    return None


def is_imported(study: Mapping[str, Any], model: ModelKey) -> bool:
    """Whether a model's checkpoint is imported (its source has it) rather than trained."""
    if model.run != 0:
        return False
    entries = study.get("models", [])
    if any(e["source"] == "salman2020" and entry_key(e) == model for e in entries):
        return True
    if study.get("checkpoints", {}).get("source", "none") == "none":
        return False
    if any(e["source"] == "train" and entry_key(e) == model for e in entries):
        return False
    from robuniv.checkpoints import CHECKPOINT_SOURCES, source_key

    return source_key(model.arch, model.eps) in CHECKPOINT_SOURCES


def models_at(study: Mapping[str, Any], eps: float) -> list[ModelKey]:
    """The models compared with each other at one eps."""
    return [m for m in study_models(study) if math.isclose(m.eps, float(eps))]


def expand_root(name: str, study: dict[str, Any]) -> None:
    """Expand `~` and `$VARS` in a study's dataset root (cluster configs name $IMAGENET_ROOT)."""
    root = os.path.expanduser(os.path.expandvars(study["dataset"]["root"]))
    if "$" in root:
        raise ConfigError(
            f"study {name!r}: dataset.root {study['dataset']['root']!r} names an environment "
            "variable that is not set"
        )
    study["dataset"]["root"] = root


def check_study(name: str, study: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the bad value; run after schema validation (defaults applied)."""
    try:
        check_root(study["dataset"]["name"], study["dataset"]["root"])
    except DatasetError as err:
        raise ConfigError(f"study {name!r}: {err}") from None
    eps_names = [format_eps(e) for e in study["eps"]]
    if len(set(eps_names)) != len(eps_names):
        raise ConfigError(f"study {name!r}: eps values {study['eps']} repeat once formatted")
    sizes = {"inputs.n_inverted": study["inputs"]["n_inverted"]}
    if study["inputs"]["n_regular"] is not None:
        sizes["inputs.n_regular"] = study["inputs"]["n_regular"]
    measures = study["similarity"]["measures"]
    for key, n in sizes.items():
        if "jaccard" in measures:
            too_large = [k for k in study["similarity"]["jaccard_k"] if k >= n]
            if too_large:
                raise ConfigError(
                    f"study {name!r}: similarity.jaccard_k {too_large} must be below {key} = {n}"
                )
        if "rtd" in measures and study["similarity"]["rtd"]["batch"] > n:
            raise ConfigError(
                f"study {name!r}: similarity.rtd.batch = {study['similarity']['rtd']['batch']} "
                f"exceeds {key} = {n}"
            )
    figures = study["figures"]
    missing_measures = set(figures["fig4"]["measures"]) - set(measures)
    if missing_measures:
        raise ConfigError(
            f"study {name!r}: figures.fig4.measures {sorted(missing_measures)} are not computed; "
            f"similarity.measures = {measures}"
        )
    for key, ks in (
        ("fig4.jaccard_k", [figures["fig4"]["jaccard_k"]]),
        ("fig8.jaccard_k", figures["fig8"]["jaccard_k"]),
    ):
        missing_k = [k for k in ks if k not in study["similarity"]["jaccard_k"]]
        if missing_k:
            raise ConfigError(
                f"study {name!r}: figures.{key} {missing_k} not in similarity.jaccard_k "
                f"{study['similarity']['jaccard_k']}"
            )
    for arch, eps_list in study["eps_per_arch"].items():
        extra = [e for e in eps_list if not any(math.isclose(e, s) for s in study["eps"])]
        if arch not in study["archs"] or extra:
            raise ConfigError(
                f"study {name!r}: eps_per_arch.{arch} = {eps_list} must name an arch of archs "
                f"{study['archs']} and eps of eps {study['eps']}"
            )
    if study["checkpoints"]["source"] != "none" and study["dataset"]["name"] != "imagenet1k":
        raise ConfigError(
            f"study {name!r}: checkpoints.source {study['checkpoints']['source']!r} holds "
            f"ImageNet1k models, the study's dataset is {study['dataset']['name']!r}"
        )
    _check_models(name, study)
    unknown_layers = set(study["model"]["layers"]) - set(study["archs"])
    if unknown_layers:
        raise ConfigError(
            f"study {name!r}: model.layers names {sorted(unknown_layers)}, not in archs {study['archs']}"
        )
    _check_analyses(name, study)


def _check_models(name: str, study: Mapping[str, Any]) -> None:
    """`models:` entries: known eps, unique keys, ids apart from trained names, files present."""
    seen: dict[ModelKey, str] = {
        m: "archs x eps x runs" for m in study_models({**study, "models": []})
    }
    for index, entry in enumerate(study.get("models", [])):
        where = f"study {name!r}: models[{index}] ({entry.get('id', entry.get('arch'))!r})"
        if not any(math.isclose(float(entry["eps"]), float(e)) for e in study["eps"]):
            raise ConfigError(
                f"{where}: eps {entry['eps']} is not in the study's eps {study['eps']}"
            )
        if entry["source"] in ("train", "salman2020"):
            if "arch" not in entry:
                raise ConfigError(f"{where}: source {entry['source']} needs an `arch`")
            if entry.get("id", entry["arch"]) != entry["arch"]:
                raise ConfigError(
                    f"{where}: a {entry['source']} model is named by its arch "
                    f"{entry['arch']!r}; drop id {entry['id']!r}"
                )
        key = entry_key(entry)
        if key in seen:
            raise ConfigError(
                f"{where}: {key.arch} at eps {format_eps(key.eps)} run {key.run} is already "
                f"given by {seen[key]}"
            )
        seen[key] = f"models[{index}]"
        if entry["source"] == "file":
            path = os.path.expanduser(os.path.expandvars(entry["path"]))
            if not os.path.isfile(path):
                raise ConfigError(f"{where}: path {entry['path']!r} is not a file")
    if len(model_names(study)) < 2 and len(study.get("runs", [0])) < 2:
        raise ConfigError(
            f"study {name!r}: compares {model_names(study)}; a study needs at least two models "
            "(archs or models entries) or two runs"
        )


def extreme_eps(study: Mapping[str, Any]) -> list[float]:
    """The study's lowest and highest eps (one value if it has one): Figs 2, 5 and 6 compare them."""
    return sorted({min(map(float, study["eps"])), max(map(float, study["eps"]))})


def extreme_models(study: Mapping[str, Any]) -> list[ModelKey]:
    """Models at the lowest and highest eps (the probed models of Fig 6)."""
    return [m for eps in extreme_eps(study) for m in models_at(study, eps)]


def fig2_models(study: Mapping[str, Any]) -> list[ModelKey]:
    """Fig 2's inverting models: the chosen architectures (default: the first two), first run,
    at the lowest and highest eps."""
    archs = study["figures"]["fig2"]["archs"] or model_names(study)[:2]
    models = study_models(study)
    chosen = []
    for arch in archs:
        for eps in extreme_eps(study):
            runs = sorted(m.run for m in models if m.arch == arch and math.isclose(m.eps, eps))
            if runs:
                chosen.append(ModelKey(arch, eps, runs[0]))
    return chosen


def _check_analyses(name: str, study: Mapping[str, Any]) -> None:
    """Figs 2, 5 and 6 need models at the extreme eps and subsets large enough to measure."""
    fig2 = study["figures"]["fig2"]["archs"]
    if fig2 is not None and set(fig2) - set(model_names(study)):
        raise ConfigError(
            f"study {name!r}: figures.fig2.archs {sorted(set(fig2) - set(model_names(study)))} "
            f"are not models of the study {model_names(study)}"
        )
    if not fig2_models(study):
        raise ConfigError(
            f"study {name!r}: no model of figures.fig2.archs exists at eps {extreme_eps(study)}"
        )
    n_train = study["probes"]["n_train"]
    if n_train is not None and round(n_train * study["probes"]["val_fraction"]) < 1:
        raise ConfigError(
            f"study {name!r}: probes.val_fraction {study['probes']['val_fraction']} of "
            f"probes.n_train {n_train} holds back no image to choose the best epoch"
        )


def check_config(studies: Mapping[str, dict[str, Any]]) -> None:
    for name, study in studies.items():
        expand_root(name, study)
        check_study(name, study)


def canonical(value: Any) -> Any:
    """A config value with every mapping's keys sorted, recursively.

    Snakemake compares rule params by their text, so two configs that differ only in
    key order (a hand-edited file vs one written by yaml.safe_dump) would otherwise
    rerun every job.
    """
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))
