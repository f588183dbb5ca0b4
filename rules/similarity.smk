# Every measure of one input kind and eps in one job: the per-model work (centring, k-NN
# graphs, softmax) and the cross product shared by cka, cka_unbiased and procrustes_sim are
# computed once, not once per measure.
rule compute_similarity:
    input:
        activations=ACTIVATIONS,
    output:
        table=SIMILARITY,
    log:
        "logs/results/{study}/similarity/{inputs}/eps{eps}.log",
    benchmark:
        "benchmarks/results/{study}/similarity/{inputs}/eps{eps}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("compute_similarity")
    resources:
        **resources_for("compute_similarity", runtime=60, mem_mb=8000),
    params:
        models=lambda wc: model_list(eps_models(wc)),
        options=lambda wc: canonical(similarity_options(study(wc))),
    script:
        "../workflow_scripts/compute_similarity.py"


rule aggregate_similarity:
    input:
        get_similarity_parts,
    output:
        table=SIMILARITY_TABLE,
    log:
        "logs/results/{study}/tables/similarity.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    script:
        "../workflow_scripts/aggregate_similarity.py"


# Fig 5: similarity of the inputs two models classify alike vs differently (regular images).
rule compute_agreement_subsets:
    input:
        activations=ACTIVATIONS,
    output:
        table=AGREEMENT_SUBSETS,
    log:
        "logs/results/{study}/similarity/agreement_subsets/eps{eps}.log",
    benchmark:
        "benchmarks/results/{study}/similarity/agreement_subsets/eps{eps}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("compute_agreement_subsets")
    resources:
        **resources_for("compute_agreement_subsets", runtime=60, mem_mb=8000),
    params:
        models=lambda wc: model_list(eps_models(wc)),
        options=lambda wc: canonical(subset_options(study(wc))),
    script:
        "../workflow_scripts/compute_agreement_subsets.py"


# Fig 9's heatmap: linear CKA of every layer of one model with every layer of another.
rule compute_layer_cka:
    input:
        activations=get_layer_cka_activations,
    output:
        table=LAYER_CKA,
    log:
        "logs/results/{study}/similarity/layer_cka.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    params:
        pair=lambda wc: model_list(fig9_pair(study(wc))),
    script:
        "../workflow_scripts/compute_layer_cka.py"
