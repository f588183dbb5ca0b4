# robuniv: are adversarially robust neural networks universal?
# A table of contents: the stages live in rules/, the logic in the robuniv package.
from snakemake.utils import min_version

min_version("9.0")


# `--configfile experiments/X.yaml` replaces the default study instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


container: "docker://ghcr.io/robuniv/robuniv:0.1.0"


include: "rules/common.smk"
include: "rules/inputs.smk"
include: "rules/training.smk"
include: "rules/evaluation.smk"
include: "rules/inversion.smk"
include: "rules/activations.smk"
include: "rules/probes.smk"
include: "rules/similarity.smk"
include: "rules/stats.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        get_final_output,
    localrule: True


# One figure by name: `snakemake fig5` (rules in rules/figures.smk).
rule figures:
    input:
        [get_figure(fig) for fig in FIGURES],
    localrule: True


rule tables:
    input:
        get_tables,
    localrule: True
