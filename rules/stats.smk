rule test_spearman:
    input:
        table=SIMILARITY_TABLE,
    output:
        table=SPEARMAN_TABLE,
        latex="results/{study}/tables/spearman.tex",
    log:
        "logs/results/{study}/tables/spearman.log",
    localrule: True
    script:
        "../workflow_scripts/test_spearman.py"
