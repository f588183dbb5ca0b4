"""Fig 5: similarity on the inputs a pair classifies alike vs differently (rule compute_agreement_subsets)."""

from robuniv import io
from robuniv.config import model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.subsets import agreement_subset_table

    table = agreement_subset_table(
        smk.input.activations,
        model_keys(smk.params.models),
        study=smk.wildcards.study,
        eps=float(smk.wildcards.eps),
        **smk.params.options,
    )
    meta = io.provenance(
        study=smk.wildcards.study,
        options=smk.params.options,
        activations_sha256=io.sha256_file(smk.input.activations),
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
