rule invert_images:
    input:
        ckpt=get_checkpoint,
        pairs=INVERSION_PAIRS,
        data=get_dataset_files,
    output:
        images=INVERTED,
    log:
        "logs/results/{study}/inverted/{arch}/eps{eps}/run{run}.log",
    benchmark:
        "benchmarks/results/{study}/inverted/{arch}/eps{eps}/run{run}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("invert_images")
    resources:
        **resources_for("invert_images", runtime=120, mem_mb=4000),
    params:
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        inversion=lambda wc: canonical(study(wc)["inversion"]),
        layers=lambda wc: canonical(study(wc)["model"]["layers"]),
        device=config["device"],
    script:
        "../workflow_scripts/invert_images.py"
