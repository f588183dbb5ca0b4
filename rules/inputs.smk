rule sample_inputs:
    input:
        get_dataset_files,
    output:
        regular=REGULAR_INPUTS,
        pairs=INVERSION_PAIRS,
    log:
        "logs/results/{study}/inputs/sample_inputs.log",
    localrule: True
    params:
        dataset=lambda wc: study(wc)["dataset"],
        inputs=lambda wc: study(wc)["inputs"],
    script:
        "../workflow_scripts/sample_inputs.py"
