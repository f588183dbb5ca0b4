rule extract_activations:
    input:
        unpack(get_inverted_sets),
        ckpt=get_checkpoint,
        regular=REGULAR_INPUTS,
        data=get_dataset_files,
    output:
        activations=ACTIVATIONS,
    log:
        "logs/results/{study}/activations/{arch}/eps{eps}/run{run}.log",
    benchmark:
        "benchmarks/results/{study}/activations/{arch}/eps{eps}/run{run}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("extract_activations")
    resources:
        **resources_for("extract_activations", runtime=30, mem_mb=8000),
    params:
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        batch_size=lambda wc: canonical(study(wc)["activations"]["batch_size"]),
        layers=lambda wc: canonical(study(wc)["model"]["layers"]),
        inverted=lambda wc: sorted(get_inverted_sets(wc)),
        device=config["device"],
    script:
        "../workflow_scripts/extract_activations.py"
