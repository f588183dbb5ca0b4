rule test_spearman:
    input:
        table=SIMILARITY_TABLE,
    output:
        table=report(
            SPEARMAN_TABLE,
            caption="../report/spearman.rst",
            category="Tables",
            subcategory="{study}",
            labels={"study": "{study}", "table": "Spearman"},
        ),
        latex="results/{study}/tables/spearman.tex",
    log:
        "logs/results/{study}/tables/spearman.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    script:
        "../workflow_scripts/test_spearman.py"


rule test_permutation:
    input:
        get_subset_parts,
    output:
        subsets=SUBSETS_TABLE,
        table=report(
            PERMUTATION_TABLE,
            caption="../report/permutation.rst",
            category="Tables",
            subcategory="{study}",
            labels={"study": "{study}", "table": "Permutation tests"},
        ),
        latex="results/{study}/tables/permutation.tex",
    log:
        "logs/results/{study}/tables/permutation.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    params:
        resamples=lambda wc: study(wc)["agreement_subsets"]["resamples"],
        seed=lambda wc: study(wc)["agreement_subsets"]["seed"],
    script:
        "../workflow_scripts/test_permutation.py"


# Fig 7: observed agreement against the bounds its two accuracies allow.
rule tabulate_bounds:
    input:
        get_study_activations,
    output:
        table=BOUNDS_TABLE,
    log:
        "logs/results/{study}/tables/agreement_bounds.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    params:
        models=lambda wc: model_list(study_models(study(wc))),
        eps=lambda wc: [format_eps(e) for e in study(wc)["eps"]],
    script:
        "../workflow_scripts/tabulate_bounds.py"


rule compare_probes:
    input:
        probes=get_probes,
    output:
        table=PROBE_TABLE,
    log:
        "logs/results/{study}/tables/probes.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    params:
        models=lambda wc: model_list(extreme_models(study(wc))),
        eps=lambda wc: [format_eps(e) for e in extreme_eps(study(wc))],
    script:
        "../workflow_scripts/compare_probes.py"
