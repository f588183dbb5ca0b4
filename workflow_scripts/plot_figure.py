"""One of the paper's figures as PDF and PNG (rules plot_fig1, plot_fig3, plot_fig4, plot_fig8)."""

from robuniv import io, plots
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    spearman = io.read_table(smk.input.spearman) if "spearman" in smk.input.keys() else None  # noqa: SIM118 - Namedlist "in" tests values
    fig = plots.draw_figure(
        smk.params.figure, io.read_table(smk.input.similarity), smk.params.options, spearman
    )
    meta = io.provenance(
        study=smk.wildcards.study, figure=smk.params.figure, options=smk.params.options
    )
    plots.save_figure(
        fig, smk.output.pdf, smk.output.png, dpi=smk.params.options["dpi"], metadata=meta
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
