"""The study's one tidy similarity table (rule aggregate_similarity)."""

import pandas as pd

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    table = pd.concat([io.read_table(path) for path in smk.input], ignore_index=True)
    io.write_table(
        smk.output.table, table, io.provenance(study=smk.wildcards.study, parts=list(smk.input))
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
