"""One of the paper's figures as PDF and PNG (rules plot_fig1, plot_fig3, plot_fig4, plot_fig8)."""

from robuniv import io, plots
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    options = smk.params.options
    similarity = io.read_table(smk.input.similarity)
    figure = smk.params.figure
    if figure == "fig1":
        fig = plots.plot_predictive(similarity, "regular")
    elif figure == "fig3":
        fig = plots.plot_predictive(similarity, "inverted")
    elif figure == "fig4":
        fig = plots.plot_representational(
            similarity,
            io.read_table(smk.input.spearman),
            measures=tuple(options["measures"]),
            k=options["jaccard_k"],
        )
    else:
        fig = plots.plot_jaccard_k(similarity, ks=tuple(options["jaccard_k"]))
    meta = io.provenance(study=smk.wildcards.study, figure=figure, options=options)
    plots.save_figure(fig, smk.output.pdf, smk.output.png, dpi=options["dpi"], metadata=meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
