"""Spearman rho of similarity against eps per (inputs, pairs, measure, k) (rule test_spearman)."""

from robuniv import io
from robuniv.log import to_file
from robuniv.stats import spearman_table, to_latex


def main(smk) -> None:
    to_file(smk.log[0])
    table = spearman_table(io.read_table(smk.input.table))
    io.write_table(smk.output.table, table, io.provenance(study=smk.wildcards.study))
    caption = (
        f"Spearman rank correlation of similarity (-RTD for RTD) with eps on "
        f"{smk.wildcards.study}: cross-architecture pairs, and pairs of one architecture "
        "from different training runs where the study has several runs."
    )
    with io.atomic_path(smk.output.latex) as tmp:
        tmp.write_text(to_latex(table, caption, f"tab:spearman-{smk.wildcards.study}"))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
