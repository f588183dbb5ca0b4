# One job per eps: every input set of the eps (the regular images, each model's inverted
# set) is read once and passed through every model of the eps, into one HDF5 file.
rule extract_activations:
    input:
        ckpts=get_eps_checkpoints,
        inverted=get_inverted_sets,
        regular=REGULAR_INPUTS,
        data=get_dataset_files,
    output:
        activations=ACTIVATIONS,
    log:
        "logs/results/{study}/activations/eps{eps}.log",
    benchmark:
        "benchmarks/results/{study}/activations/eps{eps}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("extract_activations")
    resources:
        **resources_for("extract_activations", runtime=60, mem_mb=8000),
    params:
        models=lambda wc: model_list(eps_models(wc)),
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        extraction=lambda wc: canonical(study(wc)["activations"]),
        layers=lambda wc: canonical(study(wc)["model"]["layers"]),
        depth=lambda wc: canonical(layer_options(study(wc))),
        device=config["device"],
    script:
        "../workflow_scripts/extract_activations.py"
