rule sample_inputs:
    input:
        get_dataset_files,
    output:
        regular=REGULAR_INPUTS,
        pairs=INVERSION_PAIRS,
    log:
        "logs/results/{study}/inputs/sample_inputs.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    params:
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        inputs=lambda wc: canonical(study(wc)["inputs"]),
    script:
        "../workflow_scripts/sample_inputs.py"
