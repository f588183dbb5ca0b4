rule train_model:
    input:
        get_dataset_files,
    output:
        ckpt=MODEL,
    log:
        "logs/results/{study}/models/{arch}/eps{eps}/run{run}.log",
    benchmark:
        "benchmarks/results/{study}/models/{arch}/eps{eps}/run{run}.tsv"
    conda:
        "../envs/robuniv.yaml"
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


# Released checkpoints (SPEC section 1): downloaded once, hash-checked, converted.
rule download_checkpoint:
    output:
        "{folder}/{file}",
    log:
        "logs/{folder}/{file}.log",
    wildcard_constraints:
        file="|".join(re.escape(f) for f in CHECKPOINT_FILES),
    retries: 3
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    params:
        url=lambda wc: CHECKPOINT_FILES[wc.file].url,
        sha256=lambda wc: CHECKPOINT_FILES[wc.file].sha256,
    script:
        "../workflow_scripts/download_checkpoint.py"


rule import_checkpoint:
    input:
        source=get_source_file,
    output:
        ckpt=IMPORTED,
    log:
        "logs/results/{study}/models/{arch}/eps{eps}/imported.log",
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("import_checkpoint")
    resources:
        **resources_for("import_checkpoint", runtime=30, mem_mb=6000),
    params:
        sha256=lambda wc: checkpoint_source(wc).sha256,
        trust_on_first_use=lambda wc: study(wc)["checkpoints"]["trust_on_first_use"],
    script:
        "../workflow_scripts/import_checkpoint.py"


# Models of a study's `models:` list from RobustBench, timm, torchvision or a local file
# (robuniv.zoo): loaded by the library's own loader, hash- and truncation-checked first.
# Local: downloads need the login node's internet on most clusters.
rule load_model:
    input:
        get_loaded_file,
    output:
        ckpt=LOADED,
    log:
        "logs/results/{study}/models/{arch}/eps{eps}/loaded.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    resources:
        **resources_for("load_model", runtime=30, mem_mb=8000),
    params:
        entry=lambda wc: canonical(get_loaded_entry(wc)),
        cache=lambda wc: study(wc)["model_cache"],
        dataset=lambda wc: canonical(study(wc)["dataset"]),
    script:
        "../workflow_scripts/load_model.py"
