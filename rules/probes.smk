# Fig 6: linear probes on frozen penultimate features (SPEC section 6), one job per eps.
rule extract_probe_features:
    input:
        ckpts=get_eps_checkpoints,
        data=get_dataset_files,
    output:
        features=PROBE_FEATURES,
    log:
        "logs/results/{study}/probes/features/eps{eps}.log",
    benchmark:
        "benchmarks/results/{study}/probes/features/eps{eps}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("extract_probe_features")
    resources:
        **resources_for("extract_probe_features", runtime=60, mem_mb=16000),
    params:
        models=lambda wc: model_list(eps_models(wc)),
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        probes=lambda wc: canonical(study(wc)["probes"]),
        extraction=lambda wc: canonical(study(wc)["activations"]),
        layers=lambda wc: canonical(study(wc)["model"]["layers"]),
        device=config["device"],
    script:
        "../workflow_scripts/extract_probe_features.py"


rule train_probes:
    input:
        features=PROBE_FEATURES,
        activations=ACTIVATIONS,
    output:
        probes=PROBES,
    log:
        "logs/results/{study}/probes/eps{eps}.log",
    benchmark:
        "benchmarks/results/{study}/probes/eps{eps}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("train_probes")
    resources:
        **resources_for("train_probes", runtime=60, mem_mb=16000),
    params:
        models=lambda wc: model_list(eps_models(wc)),
        probes=lambda wc: canonical(study(wc)["probes"]),
        device=config["device"],
    script:
        "../workflow_scripts/train_probes.py"
