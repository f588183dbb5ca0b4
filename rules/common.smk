import os
import re

from snakemake.utils import validate

from robuniv.compare import INPUT_KINDS
from robuniv.layer_config import check_layers, fig9_pair, layer_options
from robuniv.config import (
    adapt_stem_for,
    canonical,
    check_config,
    extreme_eps,
    extreme_models,
    fig2_models,
    format_eps,
    is_imported,
    loaded_entry,
    model_names,
    models_at,
    study_models,
    ModelKey,
)

validate(config, schema="schemas/config.schema.yaml")
# Relations the schema cannot express (dataset files, k < N, ...) stop the run here,
# before any job starts, with a message naming the bad value.
check_config(config["studies"])
# Layer specs name modules: checked on meta-device networks (imports torch, 2-4 s), by
# the process the user started; the job processes a cluster executor spawns skip it.
if workflow.is_main_process:
    check_layers(config["studies"])

STUDIES = config["studies"]

# Path templates: stage first, then keys from coarse to fine (STYLE.md section 5).
MODEL = "results/{study}/models/{arch}/eps{eps}/run{run}.pt"
IMPORTED = "results/{study}/models/{arch}/eps{eps}/imported.pt"
LOADED = "results/{study}/models/{arch}/eps{eps}/loaded.pt"
EVALUATION = "results/{study}/evaluation/eps{eps}.tsv"
REGULAR_INPUTS = "results/{study}/inputs/regular.tsv"
INVERSION_PAIRS = "results/{study}/inputs/inversion_pairs.tsv"
INVERTED = "results/{study}/inverted/{arch}/eps{eps}/run{run}.h5"
ACTIVATIONS = "results/{study}/activations/eps{eps}.h5"
SIMILARITY = "results/{study}/similarity/{inputs}/eps{eps}.tsv"
SIMILARITY_TABLE = "results/{study}/tables/similarity.tsv"
ACCURACY_TABLE = "results/{study}/tables/accuracy.tsv"
AGREEMENT_SUBSETS = "results/{study}/similarity/agreement_subsets/eps{eps}.tsv"
PROBE_FEATURES = "results/{study}/probes/features/eps{eps}.h5"
PROBES = "results/{study}/probes/eps{eps}.h5"
SPEARMAN_TABLE = "results/{study}/tables/spearman.csv"
SUBSETS_TABLE = "results/{study}/tables/agreement_subsets.tsv"
PERMUTATION_TABLE = "results/{study}/tables/permutation.csv"
BOUNDS_TABLE = "results/{study}/tables/agreement_bounds.tsv"
PROBE_TABLE = "results/{study}/tables/probes.tsv"
LAYER_CKA = "results/{study}/similarity/layer_cka.tsv"
FIGURE = "results/{study}/figures/{name}.{ext}"
FIGURES = {
    "fig1": "fig1_predictive_regular",
    "fig2": "fig2_inversions",
    "fig3": "fig3_predictive_inverted",
    "fig4": "fig4_representational",
    "fig5": "fig5_agreement_subsets",
    "fig6": "fig6_probes",
    "fig7": "fig7_agreement_bounds",
    "fig8": "fig8_jaccard_k",
    "fig9": "fig9_depth",
}


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values)))


wildcard_constraints:
    study=_alternatives(STUDIES),
    arch=_alternatives(a for s in STUDIES.values() for a in model_names(s)),
    eps=_alternatives(format_eps(e) for s in STUDIES.values() for e in s["eps"]),
    run=r"\d+",
    inputs=_alternatives(INPUT_KINDS),


def study(wildcards):
    return STUDIES[wildcards.study]


def model_path(template, study_name, model):
    return template.format(
        study=study_name, arch=model.arch, eps=format_eps(model.eps), run=model.run
    )


def model_key(wildcards):
    # Imported and loaded checkpoints have no run wildcard: they are run 0.
    return ModelKey(wildcards.arch, float(wildcards.eps), int(wildcards.get("run", 0)))


def _checkpoint_files():
    from robuniv.checkpoints import CHECKPOINT_SOURCES

    sources = (CHECKPOINT_SOURCES.get(key) for key in CHECKPOINT_SOURCES.names())
    return {source.file: source for source in sources}


CHECKPOINT_FILES = _checkpoint_files()


def get_checkpoint(wildcards):
    """The trained checkpoint of a model, or its imported one where the study imports it."""
    return checkpoint_path(wildcards.study, model_key(wildcards))


def checkpoint_source(wildcards):
    from robuniv.checkpoints import source_for

    return source_for(wildcards.arch, float(wildcards.eps))


def get_source_file(wildcards):
    folder = study(wildcards)["checkpoints"]["folder"]
    return f"{folder}/{checkpoint_source(wildcards).file}"


def get_dataset_files(wildcards):
    dataset = study(wildcards)["dataset"]
    from robuniv.data import DATASETS

    files = DATASETS.get(dataset["name"]).required_files
    return [ancient(f"{dataset['root']}/{f}") for f in files]


def eps_models(wildcards):
    """The models of one eps, in the order every per-eps rule lists them."""
    return sorted(models_at(study(wildcards), float(wildcards.eps)))


def checkpoint_path(study_name, model):
    s = STUDIES[study_name]
    if loaded_entry(s, model) is not None:
        return model_path(LOADED, study_name, model)
    return model_path(IMPORTED if is_imported(s, model) else MODEL, study_name, model)


def get_loaded_entry(wildcards):
    return loaded_entry(study(wildcards), model_key(wildcards))


def get_loaded_file(wildcards):
    """A local weights file is an input, so replacing it reloads the model."""
    entry = get_loaded_entry(wildcards)
    return [entry["path"]] if entry is not None and entry.get("path") else []


def get_eps_checkpoints(wildcards):
    return [checkpoint_path(wildcards.study, m) for m in eps_models(wildcards)]


def get_inverted_sets(wildcards):
    """Inverted images of every model at this eps: each model's activations need all of them."""
    return [model_path(INVERTED, wildcards.study, m) for m in eps_models(wildcards)]


def eps_activations(study_name, eps_values):
    return [ACTIVATIONS.format(study=study_name, eps=format_eps(e)) for e in eps_values]


def get_study_activations(wildcards):
    return eps_activations(wildcards.study, study(wildcards)["eps"])


def get_subset_parts(wildcards):
    eps = [format_eps(e) for e in extreme_eps(study(wildcards))]
    return expand(AGREEMENT_SUBSETS, study=wildcards.study, eps=eps)


def get_probes(wildcards):
    eps = [format_eps(e) for e in extreme_eps(study(wildcards))]
    return expand(PROBES, study=wildcards.study, eps=eps)


def get_fig2_inverted(wildcards):
    """Fig 2's inverted sets, named by what the figure's rows say."""
    return {
        f"{m.arch}, eps {format_eps(m.eps)}": model_path(INVERTED, wildcards.study, m)
        for m in fig2_models(study(wildcards))
    }


def model_list(models):
    """ModelKeys as plain [arch, eps, run] lists: params Snakemake can store and compare."""
    return [[m.arch, m.eps, m.run] for m in models]


def get_similarity_parts(wildcards):
    s = study(wildcards)
    return expand(
        SIMILARITY,
        study=wildcards.study,
        inputs=INPUT_KINDS,
        eps=[format_eps(e) for e in s["eps"]],
    )


def get_evaluations(wildcards):
    eps = [format_eps(e) for e in study(wildcards)["eps"]]
    return expand(EVALUATION, study=wildcards.study, eps=eps)


def model_params(wildcards):
    """Everything that defines the network: architecture, variant, width, stem, data shape."""
    s = study(wildcards)
    return {
        "width": s["model"]["width"],
        "adapt_stem": adapt_stem_for(s["model"], wildcards.arch),
    }


# Rules that run a network: they ask the scheduler for a GPU (`gpu=1`, the SLURM
# executor's --gpus) unless the config says device: cpu; every other rule asks for none.
GPU_RULES = {
    "train_model",
    "evaluate_models",
    "invert_images",
    "extract_activations",
    "extract_probe_features",
    "train_probes",
}


def scheduler_resources():
    """SLURM account and partition: the config's `slurm` block, else sbatch's own
    SBATCH_ACCOUNT / SBATCH_PARTITION; never written into the workflow."""
    chosen = {
        "slurm_account": config["slurm"]["account"] or os.environ.get("SBATCH_ACCOUNT"),
        "slurm_partition": config["slurm"]["partition"]
        or os.environ.get("SBATCH_PARTITION"),
    }
    return {key: value for key, value in chosen.items() if value}


def resources_for(rule_name, **defaults):
    """Config overrides on top of the rule's defaults; runtime and memory grow per attempt."""
    if rule_name in GPU_RULES and config["device"] != "cpu":
        defaults.setdefault("gpu", 1)
    merged = {
        **defaults,
        **scheduler_resources(),
        **config["resources"].get(rule_name, {}),
    }
    runtime, mem_mb = merged.pop("runtime", None), merged.pop("mem_mb", None)
    if runtime is not None:
        merged["runtime"] = lambda wildcards, attempt: runtime * attempt
    if mem_mb is not None:
        merged["mem_mb"] = lambda wildcards, attempt: mem_mb * attempt
    merged.pop("threads", None)
    return merged


def threads_for(rule_name, default=1):
    return config["resources"].get(rule_name, {}).get("threads", default)


def get_final_output(wildcards=None):
    outputs = []
    for name in STUDIES:
        outputs.append(ACCURACY_TABLE.format(study=name))
        outputs.append(SPEARMAN_TABLE.format(study=name))
        outputs.append(PERMUTATION_TABLE.format(study=name))
        outputs += expand(FIGURE, study=name, name=FIGURES.values(), ext=["pdf", "png"])
    return outputs


def figure_outputs(fig):
    name = FIGURES[fig]
    return {
        "pdf": FIGURE.format(study="{study}", name=name, ext="pdf"),
        "png": report(
            FIGURE.format(study="{study}", name=name, ext="png"),
            caption=f"../report/{fig}.rst",
            category="Figures",
            subcategory="{study}",
            labels={"study": "{study}", "figure": fig},
        ),
    }


def get_tables(wildcards=None):
    tables = (
        ACCURACY_TABLE,
        SIMILARITY_TABLE,
        SPEARMAN_TABLE,
        SUBSETS_TABLE,
        PERMUTATION_TABLE,
        BOUNDS_TABLE,
        PROBE_TABLE,
    )
    return [table.format(study=name) for name in STUDIES for table in tables]


def get_figure(fig):
    return [
        FIGURE.format(study=name, name=FIGURES[fig], ext=ext)
        for name in STUDIES
        for ext in ("pdf", "png")
    ]


def similarity_options(s):
    """The measures of the similarity stage and the options they read."""
    options = s["similarity"]
    rtd = options["rtd"]
    return {
        "measures": options["measures"],
        "jaccard_k": options["jaccard_k"],
        "rtd_trials": rtd["trials"],
        "rtd_batch": rtd["batch"],
        "rtd_seed": rtd["seed"],
        "layer_measures": s["layers_measures"] if any(s["layers"].values()) else [],
    }


def subset_options(s):
    """Fig 5's measures on the subsets; RTD trials and batch as in the similarity stage."""
    options = s["agreement_subsets"]
    rtd = s["similarity"]["rtd"]
    return {
        "measures": options["measures"],
        "jaccard_k": [options["jaccard_k"]],
        "rtd_trials": rtd["trials"],
        "rtd_batch": rtd["batch"],
        "rtd_seed": rtd["seed"],
        "seed": options["seed"],
    }


def get_layer_cka_activations(wildcards):
    return ACTIVATIONS.format(
        study=wildcards.study, eps=format_eps(fig9_pair(study(wildcards))[0].eps)
    )


def figure_options(s, fig):
    """The options one figure reads: the shared dpi plus its own block."""
    options = s["figures"]
    if fig == "fig5":  # draws what the agreement_subsets block computed
        subsets = s["agreement_subsets"]
        return {
            "dpi": options["dpi"],
            "measures": subsets["measures"],
            "jaccard_k": subsets["jaccard_k"],
        }
    return {"dpi": options["dpi"], **options.get(fig, {})}
