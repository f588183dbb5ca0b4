rule evaluate_model:
    input:
        ckpt=get_checkpoint,
        data=get_dataset_files,
    output:
        table=EVALUATION,
    log:
        "logs/results/{study}/evaluation/{arch}/eps{eps}/run{run}.log",
    benchmark:
        "benchmarks/results/{study}/evaluation/{arch}/eps{eps}/run{run}.tsv"
    conda:
        "../envs/robuniv.yaml"
    threads: threads_for("evaluate_model")
    resources:
        **resources_for("evaluate_model", runtime=30, mem_mb=4000),
    params:
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        evaluate=lambda wc: canonical(study(wc)["evaluate"]),
        device=config["device"],
    script:
        "../workflow_scripts/evaluate_model.py"


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
