def figure_outputs(fig):
    name = FIGURES[fig]
    return {
        "pdf": FIGURE.format(study="{study}", name=name, ext="pdf"),
        "png": report(
            FIGURE.format(study="{study}", name=name, ext="png"),
            caption=f"../report/{fig}.rst",
            category="Figures",
            subcategory="{study}",
            labels={"study": "{study}", "figure": fig},
        ),
    }


# Fig 4 prints the Spearman correlation of each panel, so it also reads that table.
FIGURE_INPUTS = {
    "fig1": {"similarity": SIMILARITY_TABLE},
    "fig3": {"similarity": SIMILARITY_TABLE},
    "fig4": {"similarity": SIMILARITY_TABLE, "spearman": SPEARMAN_TABLE},
    "fig8": {"similarity": SIMILARITY_TABLE},
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
        params:
            figure=fig,
            options=lambda wc, fig=fig: canonical(figure_options(study(wc), fig)),
        script:
            "../workflow_scripts/plot_figure.py"
