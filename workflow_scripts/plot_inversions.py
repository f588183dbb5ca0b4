"""Fig 2: seed, target and inverted images at the lowest and highest eps (rule plot_fig2)."""

from robuniv import io, plots
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import inversion_examples

    inverted = {label: smk.input[label] for label in smk.params.sets}
    examples = inversion_examples(
        inverted, dataset=smk.params.dataset, n_show=smk.params.options["n_show"]
    )
    fig = plots.draw_figure("fig2", {"inversions": examples}, smk.params.options)
    meta = io.provenance(
        study=smk.wildcards.study,
        figure="fig2",
        options=smk.params.options,
        inverted_sha256={label: io.sha256_file(path) for label, path in inverted.items()},
    )
    plots.save_figure(
        fig, smk.output.pdf, smk.output.png, dpi=smk.params.options["dpi"], metadata=meta
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
