"""Paper Tables 1-3: parameters, clean and adversarial accuracy per eps (rule tabulate_accuracy)."""

import pandas as pd

from robuniv import io
from robuniv.log import to_file
from robuniv.stats import EVALUATION_REQUIRED, accuracy_table, to_latex


def main(smk) -> None:
    to_file(smk.log[0])
    parts = [io.read_table(path, columns=EVALUATION_REQUIRED) for path in smk.input]
    evaluation = pd.concat(parts, ignore_index=True)
    evaluation.insert(0, "study", smk.wildcards.study)
    table = accuracy_table(evaluation)
    meta = io.provenance(study=smk.wildcards.study, evaluations=list(smk.input))
    io.write_table(smk.output.table, table, meta)
    caption = (
        f"Clean and adversarial accuracy (%) on {smk.wildcards.study}; eps = 0 models are "
        "attacked at eps = 0.25 (L2 PGD, 3 steps)."
    )
    with io.atomic_path(smk.output.latex) as tmp:
        tmp.write_text(to_latex(table, caption, f"tab:accuracy-{smk.wildcards.study}"))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
