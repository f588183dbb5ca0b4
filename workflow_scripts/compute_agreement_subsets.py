"""Similarity on agreeing vs disagreeing inputs of every model pair at one eps (Fig 5)."""

from robuniv import io
from robuniv.config import ModelKey
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.subsets import agreement_subset_table

    models = [ModelKey(arch, float(eps), int(run)) for arch, eps, run in smk.params.models]
    table = agreement_subset_table(
        dict(zip(models, smk.input, strict=True)),
        study=smk.wildcards.study,
        eps=float(smk.wildcards.eps),
        **smk.params.options,
    )
    meta = io.provenance(
        study=smk.wildcards.study,
        options=smk.params.options,
        activations_sha256={path: io.sha256_file(path) for path in smk.input},
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
