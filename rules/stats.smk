rule test_spearman:
    input:
        table=SIMILARITY_TABLE,
    output:
        table=SPEARMAN_TABLE,
        latex=SPEARMAN_TABLE.removesuffix(".tsv") + ".tex",
    log:
        "logs/results/{study}/tables/spearman.log",
    localrule: True
    script:
        "../workflow_scripts/test_spearman.py"
