"""One of the paper's figures from its tables, as PDF and PNG (rules plot_fig1 ... plot_fig8)."""

from robuniv import io, plots
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    # Named inputs are the figure's tables: similarity, spearman, subsets, ...
    tables = {name: io.read_table(path) for name, path in smk.input.items()}
    fig = plots.draw_figure(smk.params.figure, tables, smk.params.options)
    meta = io.provenance(
        study=smk.wildcards.study,
        figure=smk.params.figure,
        options=smk.params.options,
        tables_sha256={path: io.sha256_file(path) for path in smk.input},
    )
    plots.save_figure(
        fig, smk.output.pdf, smk.output.png, dpi=smk.params.options["dpi"], metadata=meta
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
