rule train_model:
    input:
        get_dataset_files,
    output:
        ckpt=MODEL,
    log:
        "logs/results/{study}/models/{arch}/eps{eps}/run{run}.log",
    benchmark:
        "benchmarks/results/{study}/models/{arch}/eps{eps}/run{run}.tsv"
    threads: threads_for("train_model")
    resources:
        **resources_for("train_model", runtime=60, mem_mb=4000),
    params:
        model=model_params,
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        train=lambda wc: canonical(study(wc)["train"]),
        device=config["device"],
    script:
        "../workflow_scripts/train_model.py"
