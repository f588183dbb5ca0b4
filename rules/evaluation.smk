# One job per eps: the evaluation images are decoded once for all models of that eps.
rule evaluate_models:
    input:
        ckpts=get_eps_checkpoints,
        data=get_dataset_files,
    output:
        table=EVALUATION,
    log:
        "logs/results/{study}/evaluation/eps{eps}.log",
    benchmark:
        "benchmarks/results/{study}/evaluation/eps{eps}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("evaluate_models")
    resources:
        **resources_for("evaluate_models", runtime=60, mem_mb=4000),
    params:
        models=lambda wc: model_list(eps_models(wc)),
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        evaluate=lambda wc: canonical(study(wc)["evaluate"]),
        device=config["device"],
    script:
        "../workflow_scripts/evaluate_models.py"


rule tabulate_accuracy:
    input:
        get_evaluations,
    output:
        table=report(
            ACCURACY_TABLE,
            caption="../report/accuracy.rst",
            category="Tables",
            subcategory="{study}",
            labels={"study": "{study}", "table": "Accuracy (Tables 1-3)"},
        ),
        latex="results/{study}/tables/accuracy.tex",
    log:
        "logs/results/{study}/tables/accuracy.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    script:
        "../workflow_scripts/tabulate_accuracy.py"
