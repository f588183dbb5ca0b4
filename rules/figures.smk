# Fig 4 prints the Spearman correlation of each panel, so it also reads that table.
FIGURE_INPUTS = {
    "fig1": {"similarity": SIMILARITY_TABLE},
    "fig3": {"similarity": SIMILARITY_TABLE},
    "fig4": {"similarity": SIMILARITY_TABLE, "spearman": SPEARMAN_TABLE},
    "fig5": {"subsets": SUBSETS_TABLE, "permutation": PERMUTATION_TABLE},
    "fig6": {"probes": PROBE_TABLE},
    "fig7": {"bounds": BOUNDS_TABLE},
    "fig8": {"similarity": SIMILARITY_TABLE},
    "fig9": {"similarity": SIMILARITY_TABLE, "layer_cka": LAYER_CKA},
}

for fig, fig_inputs in FIGURE_INPUTS.items():

    rule:
        name:
            f"plot_{fig}"
        input:
            **fig_inputs,
        output:
            **figure_outputs(fig),
        log:
            f"logs/results/{{study}}/figures/{fig}.log",
        localrule: True
        conda:
            "../envs/robuniv.yaml"
        params:
            figure=fig,
            options=lambda wc, fig=fig: canonical(figure_options(study(wc), fig)),
        script:
            "../workflow_scripts/plot_figure.py"


# Fig 2 shows images: the inverted sets themselves and the dataset's seed and target images.
rule plot_fig2:
    input:
        unpack(get_fig2_inverted),
        data=get_dataset_files,
    output:
        **figure_outputs("fig2"),
    log:
        "logs/results/{study}/figures/fig2.log",
    localrule: True
    conda:
        "../envs/robuniv.yaml"
    params:
        dataset=lambda wc: canonical(study(wc)["dataset"]),
        sets=lambda wc: list(get_fig2_inverted(wc)),
        options=lambda wc: canonical(figure_options(study(wc), "fig2")),
    script:
        "../workflow_scripts/plot_inversions.py"


# Targets by figure name: `snakemake fig4` rebuilds Fig 4 of every study and nothing else.
for fig in FIGURES:

    rule:
        name:
            fig
        input:
            get_figure(fig),
        localrule: True
