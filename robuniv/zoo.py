"""Models a study loads instead of training: RobustBench, timm, torchvision and local files.

A study's `models:` entries (rules/schemas/config.schema.yaml) name a source; the rule
`load_model` turns each into a robuniv checkpoint (`robuniv.models.save_checkpoint`), after
which every stage treats it like a trained model. Each source is read with its library's own
loader (`robustbench.utils.load_model`, `timm.create_model(pretrained=True)`, a torchvision
weights enum's `get_state_dict`), and the input size and normalisation come from that
library's config. Later jobs rebuild the net with the same library (no weights) and load
the checkpoint's weights into it (`build_net`).

Nothing is unpickled unchecked: a local or cached weights file is hash-checked first where
the entry pins `sha256`, checked for truncation (zip or safetensors structure) always, and,
where no hash is pinned, must load under `torch.load(weights_only=True)` before any library
loader (some of which unpickle freely) sees it.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import os
import struct
import sys
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robuniv.io import sha256_file
from robuniv.log import UserError
from robuniv.models import ModelSpec, RobustModel, save_checkpoint, split_robustness_state

log = logging.getLogger(__name__)


class ZooError(UserError):
    """A model that cannot be loaded, named with the reason in one line."""


@dataclass(frozen=True)
class ModelEntry:
    """One `models:` entry of a study (already schema-validated)."""

    id: str
    source: str
    eps: float
    run: int = 0
    arch: str = ""
    name: str = ""
    dataset: str = ""
    threat_model: str = ""
    weights: str = ""
    path: str = ""
    sha256: str | None = None
    num_classes: int | None = None
    layer: str = ""

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> ModelEntry:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in entry.items() if k in known}
        values["eps"] = float(values["eps"])
        if values.get("sha256"):
            values["sha256"] = str(values["sha256"]).lower()
        return cls(**values)

    def describe(self) -> str:
        what = self.name or self.weights or self.path or self.arch
        return f"model {self.id!r} ({self.source} {what})"


def nearest(name: str, known: Iterable[str], n: int = 5) -> str:
    """'did you mean' text: the closest of `known` to `name`."""
    candidates = list(known)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not close:
        close = sorted(candidates)[:n]
    return ", ".join(close)


# --- vetting a weights file before any loader unpickles it -----------------


def vet_file(path: str | Path, entry: ModelEntry) -> Any:
    """Raise ZooError unless `path` is a whole weights file that is safe to hand to a loader.

    Returns what `torch.load(weights_only=True)` read where that was the check (no pinned
    hash, not safetensors), so a caller that wants the file's contents need not read it again;
    else None.
    """
    path = Path(path)
    who = entry.describe()
    if not path.is_file():
        raise ZooError(f"{who}: weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise ZooError(f"{who}: weights file {path} is empty")
    if entry.sha256:
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ZooError(
                f"{who}: {path} has sha256 {actual}, the config pins {entry.sha256}; "
                "refused before unpickling"
            )
    if path.suffix == ".safetensors":
        _check_safetensors(path, who)
        return None
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError) as err:
            raise ZooError(f"{who}: {path} is a damaged zip archive ({err})") from None
        if bad is not None:
            raise ZooError(f"{who}: {path} is damaged (member {bad} fails its CRC)")
    elif _looks_truncated_zip(path):
        raise ZooError(f"{who}: {path} is truncated (a torch zip archive without its directory)")
    if entry.sha256:
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means: do not unpickle it freely
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ZooError(
            f"{who}: {path} does not load as plain weights ({reason}); pin its sha256 in "
            "the config to trust it"
        ) from None


def _looks_truncated_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _check_safetensors(path: Path, who: str) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ZooError(f"{who}: {path} is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ZooError(f"{who}: {path} has a damaged safetensors header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ZooError(f"{who}: {path} is truncated ({size} bytes, its header needs {8 + n + end})")


# --- RobustBench --------------------------------------------------------------


def _robustbench() -> Any:
    """robustbench.utils, importable from PyPI alone.

    RobustBench 1.1.1 imports `autoattack`, which is published only on GitHub; PyPI's
    `pyautoattack` (the `zoo` extra) is the same code under another name.
    """
    if importlib.util.find_spec("autoattack") is None:
        try:
            import pyautoattack
            import pyautoattack.state
        except ImportError:
            raise ZooError(
                "RobustBench needs AutoAttack: pip install 'robuniv[zoo]' (pyautoattack)"
            ) from None
        sys.modules.setdefault("autoattack", pyautoattack)
        sys.modules.setdefault("autoattack.state", pyautoattack.state)
    try:
        import robustbench.utils
    except ImportError as err:
        raise ZooError(
            f"RobustBench is not installed ({err}): pip install 'robuniv[zoo]'"
        ) from None
    return robustbench.utils


def _robustbench_enum(kind: Any, value: str, what: str, who: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise ZooError(f"{who}: RobustBench has no {what} {value!r}; known: {known}") from None


def _robustbench_models(entry_or_spec: Any, dataset: str, threat_model: str) -> dict[str, Any]:
    _robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    ds = _robustbench_enum(BenchmarkDataset, dataset, "dataset", entry_or_spec)
    tm = _robustbench_enum(ThreatModel, threat_model, "threat model", entry_or_spec)
    return model_dicts[ds][tm]


def _load_robustbench(entry: ModelEntry, cache_dir: Path) -> nn.Module:
    who = entry.describe()
    models = _robustbench_models(who, entry.dataset, entry.threat_model)
    if entry.name not in models:
        raise ZooError(
            f"{who}: no such RobustBench model for {entry.dataset} {entry.threat_model}; "
            f"nearest: {nearest(entry.name, models)}"
        )
    utils = _robustbench()
    model_dir = cache_dir / "robustbench"
    weights = model_dir / entry.dataset / entry.threat_model / f"{entry.name}.pt"
    if not weights.is_file():
        gdrive = models[entry.name].get("gdrive_id")
        if not gdrive or isinstance(gdrive, list):
            raise ZooError(f"{who}: {weights} is missing and RobustBench has no single file for it")
        weights.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", entry.name, weights)
        try:
            utils.download_gdrive_new(gdrive, weights)
        except Exception as err:  # noqa: BLE001 - gdown and requests raise many kinds
            weights.unlink(missing_ok=True)
            raise ZooError(f"{who}: download to {weights} failed ({type(err).__name__})") from None
    vet_file(weights, entry)
    return utils.load_model(
        entry.name, model_dir=str(model_dir), dataset=entry.dataset, threat_model=entry.threat_model
    )


# --- timm -------------------------------------------------------------------


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ZooError(f"timm is not installed ({err}): pip install 'robuniv[zoo]'") from None
    return timm


def _load_timm(entry: ModelEntry, cache_dir: Path) -> nn.Module:
    # huggingface_hub reads its cache folder once, when timm first imports it.
    os.environ.setdefault("HF_HUB_CACHE", str(cache_dir / "huggingface"))
    timm = _timm()
    who = entry.describe()
    if not timm.is_model(entry.name):
        raise ZooError(
            f"{who}: no such timm model; nearest: {nearest(entry.name, timm.list_models())}"
        )
    kwargs: dict[str, Any] = {}
    if entry.num_classes is not None:
        kwargs["num_classes"] = entry.num_classes
    path = Path(entry.path) if entry.path else None
    if path is None and entry.sha256:
        # A pinned hash needs the file before timm opens it: fetch it from the hub as timm
        # would (safetensors first), then hand timm the checked local copy.
        path = _timm_hub_file(entry)
    if path is not None:
        vet_file(path, entry)
        kwargs["pretrained_cfg_overlay"] = {"file": str(path.resolve())}
    try:
        return timm.create_model(entry.name, pretrained=True, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        # Weights that do not fit, or a hub download that failed (no internet on the node).
        raise ZooError(f"{who}: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None


def _timm_hub_file(entry: ModelEntry) -> Path:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(entry.name)
    if cfg is None or not cfg.hf_hub_id:
        raise ZooError(
            f"{entry.describe()}: timm has no hub file to check the pinned sha256 against"
        )
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in ("model.safetensors", cfg.hf_hub_filename or "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(cfg.hf_hub_id, filename=filename))
        except Exception as err:  # noqa: BLE001 - the hub client raises many kinds
            errors.append(type(err).__name__)
    raise ZooError(
        f"{entry.describe()}: download from {cfg.hf_hub_id} failed ({', '.join(errors)})"
    )


def _timm_classifier_input(net: nn.Module) -> str:
    classifier = net.get_classifier()
    for name, module in net.named_modules():
        if module is classifier and name:
            return f"{name}:in"
    return _last_linear_input(net)


# --- torchvision ----------------------------------------------------------------


def _torchvision_weights(entry: ModelEntry) -> Any:
    import torchvision

    try:
        return torchvision.models.get_weight(entry.weights)
    except (ValueError, KeyError, AttributeError):
        known = [
            f"{w.__class__.__name__}.{w.name}"
            for model in torchvision.models.list_models()
            for w in torchvision.models.get_model_weights(model)
        ]
        raise ZooError(
            f"{entry.describe()}: no such torchvision weights; nearest: {nearest(entry.weights, known)}"
        ) from None


def _load_torchvision(entry: ModelEntry, cache_dir: Path) -> tuple[nn.Module, Any, str]:
    """(net with its weights, the weights enum member, the builder's name)."""
    import torchvision

    weights = _torchvision_weights(entry)
    name = entry.name or weights.__class__.__name__.removesuffix("_Weights").lower()
    if name not in torchvision.models.list_models():
        raise ZooError(
            f"{entry.describe()}: no such torchvision model; nearest: "
            f"{nearest(name, torchvision.models.list_models())}"
        )
    torch.hub.set_dir(str(cache_dir / "torch"))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        # torchvision's file names carry a prefix of their sha256, which torch checks.
        prefix = os.path.basename(weights.url).rsplit("-", 1)[-1].split(".")[0]
        try:
            torch.hub.download_url_to_file(weights.url, str(cached), hash_prefix=prefix)
        except Exception as err:  # noqa: BLE001 - urllib and torch raise many kinds
            raise ZooError(
                f"{entry.describe()}: download of {weights.url} failed ({type(err).__name__})"
            ) from None
    vet_file(cached, entry)
    net = torchvision.models.get_model(
        name, weights=None, num_classes=len(weights.meta["categories"])
    )
    net.load_state_dict(weights.get_state_dict(progress=False, check_hash=False))
    return net, weights, name


# --- a local file with a registry architecture ----------------------------------


def _read_file_state(entry: ModelEntry) -> tuple[dict | None, dict, dict]:
    """(robuniv spec or None, normaliser state, net state) of a robuniv or robustness-library
    checkpoint or a plain state dict."""
    ckpt = vet_file(entry.path, entry)
    if ckpt is None:
        # A pinned hash is the user's trust in the file (robustness' own checkpoints pickle
        # more than tensors); without one, vet_file read it as plain weights.
        ckpt = torch.load(entry.path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ZooError(f"{entry.describe()}: {entry.path} holds no state dict")
    meta = ckpt.get("robuniv") if isinstance(ckpt, dict) else None
    spec = meta.get("spec") if isinstance(meta, dict) else None
    keys = [k.removeprefix("module.") for k in state]
    if any(k.startswith(("model.", "normalizer.", "attacker.")) for k in keys):
        try:
            return (spec, *split_robustness_state(state))
        except ValueError as err:
            raise ZooError(f"{entry.describe()}: {entry.path}: {err}") from None
    return spec, {}, {k.removeprefix("module."): v for k, v in state.items()}


def _load_file(
    entry: ModelEntry, dataset: str, width: float, adapt_stem: bool | None
) -> RobustModel:
    """A registry architecture's weights from a local file; a robuniv checkpoint brings its
    own spec (width, stem), others get the study's."""
    from robuniv.data import DATASETS
    from robuniv.models import build_model
    from robuniv.pipeline import model_spec

    stored, normalizer, state = _read_file_state(entry)
    who = entry.describe()
    if stored is not None:
        spec = ModelSpec.from_dict(stored)
        if spec.arch != entry.arch:
            raise ZooError(f"{who}: {entry.path} holds a {spec.arch} model, not {entry.arch}")
    else:
        spec = model_spec(entry.arch, dataset, width=width, adapt_stem=adapt_stem)
    changes: dict[str, Any] = {}
    if entry.num_classes is not None:
        changes["num_classes"] = entry.num_classes
    if "new_mean" in normalizer:
        changes["mean"] = normalizer["new_mean"].flatten().tolist()
        changes["std"] = normalizer["new_std"].flatten().tolist()
    if entry.layer:
        changes["penultimate"] = entry.layer
    spec = ModelSpec(**{**spec.__dict__, **changes})
    if spec.in_channels != DATASETS.get(dataset).in_channels:
        raise ZooError(
            f"{who}: the model takes {spec.in_channels} channels, dataset {dataset!r} has "
            f"{DATASETS.get(dataset).in_channels}"
        )
    model = build_model(spec)
    try:
        model.model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ZooError(f"{who}: weights do not fit {entry.arch}: {first}") from None
    return model.eval()


# --- entry point ---------------------------------------------------------------------


def _last_linear_input(net: nn.Module) -> str:
    last = ""
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) and name:
            last = name
    if not last:
        raise ZooError(f"{type(net).__name__} has no Linear layer; give the entry a `layer`")
    return f"{last}:in"


def _count_classes(net: nn.Module, in_channels: int, size: tuple[int, int]) -> int:
    with torch.no_grad():
        return int(net.eval()(torch.zeros(1, in_channels, *size)).shape[-1])


def _check_classes(entry: ModelEntry, num_classes: int, dataset: str) -> None:
    # Agreement, JSD and the probes compare outputs class by class.
    from robuniv.data import DATASETS

    expected = DATASETS.get(dataset).num_classes
    if num_classes != expected:
        raise ZooError(
            f"{entry.describe()}: the model has {num_classes} outputs, dataset {dataset!r} has "
            f"{expected} classes (set num_classes, or study it on its own dataset)"
        )


def load_entry(
    entry: ModelEntry, *, cache_dir: str | Path, dataset: str, width: float = 1.0,
    adapt_stem: bool | None = None,
) -> RobustModel:  # fmt: skip
    """The entry's model with its weights, as a RobustModel whose spec can rebuild it."""
    from robuniv.data import DATASETS

    DATASETS.get(dataset)  # KeyError naming the known datasets
    cache_dir = Path(cache_dir)
    if entry.source == "file":
        model = _load_file(entry, dataset, width, adapt_stem)
        _check_classes(entry, model.spec.num_classes, dataset)
        return model
    if entry.source == "robustbench":
        net = _load_robustbench(entry, cache_dir)
        # RobustBench nets normalise inside and take [0, 1] images at the dataset's size.
        channels, size = 3, (224, 224) if entry.dataset == "imagenet" else (32, 32)
        mean, std = (0.0,) * channels, (1.0,) * channels
        layer = entry.layer or _last_linear_input(net)
        extra = {"source_dataset": entry.dataset, "source_threat_model": entry.threat_model}
        arch = entry.name
    elif entry.source == "timm":
        net = _load_timm(entry, cache_dir)
        cfg = net.pretrained_cfg
        channels, size = int(cfg["input_size"][0]), tuple(int(v) for v in cfg["input_size"][1:])
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        layer = entry.layer or _timm_classifier_input(net)
        extra, arch = {}, entry.name
    elif entry.source == "torchvision":
        net, weights, arch = _load_torchvision(entry, cache_dir)
        transforms = weights.transforms()
        channels = 3
        crop = transforms.crop_size[0]
        size = (crop, crop)
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        layer = entry.layer or _last_linear_input(net)
        extra = {}
    else:
        raise ZooError(f"{entry.describe()}: source {entry.source!r} is not loaded by robuniv.zoo")
    num_classes = _count_classes(net, channels, size)
    _check_classes(entry, num_classes, dataset)
    spec = ModelSpec(
        arch=arch,
        num_classes=num_classes,
        in_channels=channels,
        mean=mean,
        std=std,
        source=entry.source,
        input_size=size,
        penultimate=layer,
        **extra,
    )
    return RobustModel(spec, net).eval()


def build_net(spec: ModelSpec) -> nn.Module:
    """A zoo model's net without weights, from its library's own constructor."""
    if spec.source == "timm":
        return _timm().create_model(spec.arch, pretrained=False, num_classes=spec.num_classes)
    if spec.source == "torchvision":
        import torchvision

        return torchvision.models.get_model(spec.arch, weights=None, num_classes=spec.num_classes)
    if spec.source == "robustbench":
        models = _robustbench_models(spec.arch, spec.source_dataset, spec.source_threat_model)
        if spec.arch in models:
            return models[spec.arch]["model"]()
        timm_name = f"{spec.arch.lower().replace('-', '_')}_{spec.source_dataset}_{spec.source_threat_model.lower()}"
        return _timm().create_model(timm_name, pretrained=False, num_classes=spec.num_classes)
    raise ValueError(f"model source {spec.source!r} has no constructor in robuniv.zoo")


def load_model_stage(
    entry: Mapping[str, Any],
    *,
    cache_dir: str | Path,
    dataset: Mapping[str, Any],
    output: str | Path,
    provenance: Mapping[str, Any],
) -> None:
    """Rule load_model: the entry's model as a robuniv checkpoint (written atomically)."""
    model_entry = ModelEntry.from_config(entry)
    model = load_entry(model_entry, cache_dir=cache_dir, dataset=dataset["name"])
    extra: dict[str, Any] = {"provenance": dict(provenance), "source": dict(entry)}
    if model_entry.path:
        extra["source_sha256"] = sha256_file(model_entry.path)
    save_checkpoint(output, model, epoch=0, extra=extra)
    log.info(
        "%s: %s, %d classes, input %s, feature layer %s",
        model_entry.describe(), type(model.model).__name__, model.spec.num_classes,
        model.spec.input_size, model.spec.penultimate,
    )  # fmt: skip
