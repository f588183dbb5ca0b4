# Fig 6: linear probes on frozen penultimate features (SPEC section 6).
rule extract_probe_features:
    input:
        ckpt=get_checkpoint,
        data=get_dataset_files,
    output:
        features=PROBE_FEATURES,
    log:
        "logs/results/{study}/probes/features/{arch}/eps{eps}/run{run}.log",
    benchmark:
        "benchmarks/results/{study}/probes/features/{arch}/eps{eps}/run{run}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("extract_probe_features")
    resources:
        **resources_for("extract_probe_features", runtime=60, mem_mb=16000),
    params:
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        probes=lambda wc: canonical(study(wc)["probes"]),
        batch_size=lambda wc: study(wc)["activations"]["batch_size"],
        layers=lambda wc: canonical(study(wc)["model"]["layers"]),
        device=config["device"],
    script:
        "../workflow_scripts/extract_probe_features.py"


rule train_probe:
    input:
        features=PROBE_FEATURES,
        activations=ACTIVATIONS,
    output:
        probe=PROBE,
    log:
        "logs/results/{study}/probes/{arch}/eps{eps}/run{run}.log",
    benchmark:
        "benchmarks/results/{study}/probes/{arch}/eps{eps}/run{run}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("train_probe")
    resources:
        **resources_for("train_probe", runtime=60, mem_mb=16000),
    params:
        probes=lambda wc: canonical(study(wc)["probes"]),
        device=config["device"],
    script:
        "../workflow_scripts/train_probe.py"
