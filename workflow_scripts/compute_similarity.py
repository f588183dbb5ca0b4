"""Every measure over all model pairs of one eps and input kind (rule compute_similarity)."""

from robuniv import io
from robuniv.compare import similarity_table
from robuniv.config import model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    options = dict(smk.params.options)
    table = similarity_table(
        smk.input.activations,
        model_keys(smk.params.models),
        smk.wildcards.inputs,
        options.pop("measures"),
        study=smk.wildcards.study,
        eps=float(smk.wildcards.eps),
        **options,
    )
    meta = io.provenance(
        study=smk.wildcards.study,
        options=smk.params.options,
        activations_sha256=io.sha256_file(smk.input.activations),
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
