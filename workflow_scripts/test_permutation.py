"""Paired permutation tests of agree vs disagree similarity per measure and eps (Fig 5)."""

import pandas as pd

from robuniv import io
from robuniv.log import to_file
from robuniv.stats import SUBSET_REQUIRED, permutation_table, to_latex


def main(smk) -> None:
    to_file(smk.log[0])
    parts = [io.read_table(path, columns=SUBSET_REQUIRED) for path in smk.input]
    subsets = pd.concat(parts, ignore_index=True)
    meta = io.provenance(study=smk.wildcards.study, parts=list(smk.input))
    io.write_table(smk.output.subsets, subsets, meta)
    table = permutation_table(subsets, resamples=smk.params.resamples, seed=smk.params.seed)
    io.write_table(
        smk.output.table,
        table,
        {**meta, "resamples": smk.params.resamples, "seed": smk.params.seed},
    )
    caption = (
        f"Similarity of agreeing vs disagreeing inputs on {smk.wildcards.study}: paired "
        f"sign-flip permutation test over model pairs ({smk.params.resamples} resamples, "
        f"seed {smk.params.seed}); -RTD for RTD."
    )
    with io.atomic_path(smk.output.latex) as tmp:
        tmp.write_text(to_latex(table, caption, f"tab:permutation-{smk.wildcards.study}"))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
