"""Price a config before submitting it: jobs, units of work and hours per rule.

    python -m robuniv.plan --configfile experiments/paper.yaml [--bench FILE]

The jobs are the ones the workflow runs for the config from scratch (the same functions
decide them: `robuniv.config.study_models`, `models_at`, `extreme_eps`, `is_imported`).
Each job's work is counted in the unit its cost scales with, and multiplied by the
seconds per unit that `python -m robuniv.bench networks|similarity|rtd --json FILE`
measured. A bench file measured on a GPU node prices the torch rules in GPU-hours; the
shipped default (`robuniv/data/bench_cpu.json`, measured on a 2-core CPU machine) prices
them in CPU-hours of that machine, and the output says so. Similarity always runs on CPUs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robuniv.config import (
    ModelKey,
    adapt_stem_for,
    extreme_eps,
    is_imported,
    loaded_entry,
    models_at,
    study_models,
)

DEFAULT_BENCH = "bench_cpu.json"
DEFAULT_SCHEMA = Path("rules/schemas/config.schema.yaml")
# Local rules that read tables and draw figures: seconds each, counted but not priced.
LOCAL_RULES = (
    "sample_inputs",
    "aggregate_similarity",
    "tabulate_accuracy",
    "test_spearman",
    "test_permutation",
    "tabulate_bounds",
    "compare_probes",
    "compute_layer_cka",
    *(f"plot_fig{i}" for i in range(1, 10)),
)
# Fig 5's subsets: on average the smaller of agreeing/disagreeing inputs; priced at this
# share of the regular images (an upper bound for pairs that agree on 75 % or more).
SUBSET_SHARE = 0.25


@dataclass
class Work:
    """What one rule costs over the whole config."""

    rule: str
    jobs: int = 0
    unit: str = ""
    units: float = 0.0
    resource: str = "local"
    seconds: float = 0.0
    # Units of loaded models (robuniv.zoo): `bench networks` times the registry's nets only.
    unpriced_units: float = 0.0


def _with_defaults(validator_class: Any) -> Any:
    """A jsonschema validator that fills in `default:` values as Snakemake's validate does."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_config(path: str | Path, schema: str | Path = DEFAULT_SCHEMA) -> dict[str, Any]:
    """A config file validated against the workflow's schema, with its defaults filled in.

    The dataset roots are not checked: a study can be priced before its data is there.
    """
    import jsonschema

    schema_path = Path(schema)
    if not schema_path.is_file():
        raise FileNotFoundError(
            f"config schema {str(schema_path)!r} not found: run from the repository root or "
            "pass --schema rules/schemas/config.schema.yaml"
        )
    config = yaml.safe_load(Path(path).read_text())
    schema_doc = yaml.safe_load(schema_path.read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema_doc)
    # Defaults of nested objects appear as their parents' defaults are filled in: repeat
    # until nothing changes (the study blocks are two levels deep).
    for _ in range(4):
        validator.validate(config)
    return config


def _pairs(m: int) -> int:
    return m * (m - 1) // 2


def _split_size(study: Mapping[str, Any], split: int, n: int | None) -> int:
    from robuniv.data import DATASETS

    return int(n) if n is not None else DATASETS.get(study["dataset"]["name"]).split_sizes[split]


@dataclass(frozen=True)
class Task:
    """Part of one job's work: `units` of `unit`, for one model or one similarity measure.

    Tasks with equal (rule, job) run in one job.
    """

    rule: str
    job: tuple[Any, ...]
    unit: str = "job"
    units: float = 0.0
    model: ModelKey | None = None
    measure: str | None = None
    rows: int = 0


def study_tasks(name: str, study: Mapping[str, Any]) -> Iterator[Task]:
    """Every job one study runs from scratch, with the work each one does."""
    train, inputs, inversion = study["train"], study["inputs"], study["inversion"]
    n_train = _split_size(study, 0, train["n_images"])
    n_eval = _split_size(study, 1, study["evaluate"]["n_images"])
    n_regular = _split_size(study, 1, inputs["n_regular"])
    n_inverted = inputs["n_inverted"]
    yield Task("sample_inputs", (name,))
    for model in study_models(study):
        job = (name, model)
        if loaded_entry(study, model) is not None:
            yield Task("load_model", job, "files", 1, model)
        elif is_imported(study, model):
            yield Task("download_checkpoint", job, "files", 1, model)
            yield Task("import_checkpoint", job, "files", 1, model)
        else:
            unit = "PGD training images" if model.eps > 0 else "clean training images"
            yield Task("train_model", job, unit, n_train * train["epochs"], model)
        steps = n_inverted * inversion["steps"]
        yield Task("invert_images", job, "inversion image-steps", steps, model)
    for eps in study["eps"]:
        at_eps = models_at(study, eps)
        m = len(at_eps)
        for model in at_eps:
            yield Task("evaluate_models", (name, eps), "PGD-evaluated images", n_eval, model)
            forward = n_regular + m * n_inverted
            yield Task("extract_activations", (name, eps), "forward images", forward, model)
        for kind, pairs, n in (
            ("regular", _pairs(m), n_regular),
            ("inverted", 2 * _pairs(m), n_inverted),
        ):
            for measure in study["similarity"]["measures"]:
                job = (name, eps, kind)
                yield Task("compute_similarity", job, "pairs x measures", pairs, None, measure, n)
    n_probe = _split_size(study, 0, study["probes"]["n_train"])
    epochs = study["probes"]["epochs"]
    subset_rows = max(2, round(SUBSET_SHARE * n_regular))
    for eps in extreme_eps(study):
        at_eps = models_at(study, eps)
        job = (name, eps)
        for model in at_eps:
            yield Task("extract_probe_features", job, "forward images", n_probe, model)
            yield Task("train_probes", job, "probe sample-epochs", n_probe * epochs, model)
        for measure in study["agreement_subsets"]["measures"]:
            pairs = 2 * _pairs(len(at_eps))  # the agreeing and the disagreeing subset
            yield Task(
                "compute_agreement_subsets", job, "pairs x measures", pairs, None, measure,
                subset_rows,
            )  # fmt: skip
    for rule in LOCAL_RULES[1:]:
        yield Task(rule, (name,))


def config_tasks(config: Mapping[str, Any]) -> list[Task]:
    return [task for name, study in config["studies"].items() for task in study_tasks(name, study)]


def job_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """Jobs per rule the config runs from scratch (what `snakemake -n` lists, `all` aside)."""
    jobs = {(task.rule, task.job) for task in config_tasks(config)}
    counts: dict[str, int] = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    return counts


_FIELDS = {
    "PGD training images": "train_pgd_s_per_image",
    "clean training images": "train_clean_s_per_image",
    "inversion image-steps": "inversion_s_per_image_step",
    "PGD-evaluated images": "evaluate_s_per_image",
    "forward images": "forward_s_per_image",
}


def _network_cost(bench: Mapping[str, Any], study: Mapping[str, Any], task: Task) -> float:
    from robuniv.bench import network_key
    from robuniv.data import DATASETS
    from robuniv.pipeline import model_spec

    data = DATASETS.get(study["dataset"]["name"])
    assert task.model is not None
    spec = model_spec(
        task.model.arch,
        data.name,
        width=study["model"]["width"],
        adapt_stem=adapt_stem_for(study["model"], task.model.arch),
    )
    key = network_key(spec, data.image_size)
    measured = bench.get("networks", {}).get("per_network", {})
    if key not in measured:
        raise KeyError(
            f"the bench file has no measurement of {key}; measure it with "
            "`python -m robuniv.bench networks --configfile CONFIG --json FILE`"
        )
    if task.unit == "probe sample-epochs":
        # A linear layer on the penultimate features: priced per feature x class, from the
        # bench's probe timing.
        return float(bench["networks"].get("probe_s_per_sample_epoch", 0.0))
    return float(measured[key][_FIELDS[task.unit]])


def _similarity_cost(bench: Mapping[str, Any], study: Mapping[str, Any], task: Task) -> float:
    """Seconds per pair of one measure at the job's N, scaled from the bench's N."""
    if task.measure == "rtd":
        measured = bench.get("rtd")
        if not measured:
            raise KeyError(
                "the bench file has no RTD timings; measure them with "
                "`python -m robuniv.bench rtd --json FILE`"
            )
        rtd = study["similarity"]["rtd"]
        batch = min(rtd["batch"], task.rows)
        # A barcode's cost grows about with the cube of the batch (edges x reduction).
        per_barcode = measured["seconds_per_barcode"] * (batch / measured["batch"]) ** 3
        return 2 * rtd["trials"] * per_barcode
    similarity = bench.get("similarity")
    if not similarity:
        raise KeyError(
            "the bench file has no similarity timings; measure them with "
            "`python -m robuniv.bench similarity --json FILE`"
        )
    per_pair = similarity["seconds_per_pair_measure"][task.measure]
    # k-NN graphs are N x N; the other measures' work grows with N (D x D cross products).
    scale = (task.rows / similarity["n"]) ** (2 if task.measure == "jaccard" else 1)
    return per_pair * scale


def price(config: Mapping[str, Any], bench: Mapping[str, Any]) -> list[Work]:
    """Work per rule over every study of the config, priced with the bench file."""
    on_gpu = bench.get("networks", {}).get("device") == "cuda"
    torch_resource = "GPU" if on_gpu else "CPU (bench machine)"
    counts = job_counts(config)
    rows: dict[str, Work] = {}
    for name, study in config["studies"].items():
        for task in study_tasks(name, study):
            work = rows.setdefault(task.rule, Work(task.rule, jobs=counts[task.rule]))
            work.unit = task.unit
            work.units += task.units
            if task.measure is not None:
                work.resource = "CPU"
                work.seconds += task.units * _similarity_cost(bench, study, task)
            elif task.unit in _FIELDS or task.unit == "probe sample-epochs":
                work.resource = torch_resource
                if task.model is not None and loaded_entry(study, task.model) is not None:
                    work.unpriced_units += task.units
                else:
                    work.seconds += task.units * _network_cost(bench, study, task)
    return list(rows.values())


def load_bench(path: str | Path | None) -> tuple[dict[str, Any], str]:
    from robuniv.io import read_json

    if path is not None:
        return read_json(path), str(path)
    shipped = resources.files("robuniv") / "data" / DEFAULT_BENCH
    return read_json(Path(str(shipped))), f"robuniv/data/{DEFAULT_BENCH} (shipped)"


def render(rows: list[Work], bench: Mapping[str, Any], source: str) -> str:
    networks = bench.get("networks", {})
    lines = [
        f"per-unit costs: {source}",
        (
            f"  torch rules measured on {networks.get('device_name', '?')}"
            f" (amp {networks.get('amp')}, channels_last {networks.get('channels_last')})"
        ),
    ]
    if networks.get("device") != "cuda":
        lines.append(
            "  no GPU measurement: torch rules are priced in this CPU machine's hours; measure "
            "on a GPU node (`python -m robuniv.bench networks --device cuda --json FILE`) "
            "for GPU-hours"
        )
    lines.append("")
    header = f"{'rule':<28}{'jobs':>6}  {'units':>12}  {'unit':<24}{'resource':<22}{'hours':>10}"
    lines += [header, "-" * len(header)]
    totals: dict[str, float] = {}
    for work in sorted(rows, key=lambda w: -w.seconds):
        hours = work.seconds / 3600
        if work.seconds:
            totals[work.resource] = totals.get(work.resource, 0.0) + hours
        units = f"{work.units:.3g}" if work.units else "-"
        lines.append(
            f"{work.rule:<28}{work.jobs:>6}  {units:>12}  {work.unit or 'job':<24}"
            f"{work.resource:<22}{_hours(hours):>10}"
        )
    lines += ["-" * len(header), f"jobs: {sum(w.jobs for w in rows)}"]
    unpriced = [f"{w.rule} {w.unpriced_units:.3g} {w.unit}" for w in rows if w.unpriced_units]
    if unpriced:
        lines.append(
            "not priced (models loaded from a zoo; the bench times registry architectures "
            f"only): {'; '.join(unpriced)}"
        )
    threads = networks.get("threads")
    for resource, hours in sorted(totals.items()):
        extra = f" ({hours * threads:.3g} core-hours at {threads} threads)" if threads else ""
        lines.append(f"total {resource}: {_hours(hours)} hours{extra}")
    return "\n".join(lines)


def _hours(hours: float) -> str:
    if hours == 0:
        return "-"
    if hours < 0.01:
        return f"{hours * 3600:.0f} s"
    return f"{hours:,.{max(0, 2 - math.floor(math.log10(hours)))}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m robuniv.plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--bench", help="bench JSON (default: the shipped CPU measurement)")
    parser.add_argument("--schema", default=str(DEFAULT_SCHEMA))
    args = parser.parse_args(argv)
    config = load_config(args.configfile, args.schema)
    bench, source = load_bench(args.bench)
    print(render(price(config, bench), bench, source))


if __name__ == "__main__":
    main()
