"""One measure over all model pairs of one eps and input kind (rule compute_similarity)."""

from robuniv import io
from robuniv.compare import similarity_table
from robuniv.config import ModelKey
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    models = [ModelKey(arch, float(eps), int(run)) for arch, eps, run in smk.params.models]
    table = similarity_table(
        dict(zip(models, smk.input, strict=True)),
        smk.wildcards.inputs,
        smk.wildcards.measure,
        study=smk.wildcards.study,
        eps=float(smk.wildcards.eps),
        **smk.params.options,
    )
    meta = io.provenance(
        study=smk.wildcards.study,
        measure=smk.wildcards.measure,
        options=smk.params.options,
        activations_sha256={path: io.sha256_file(path) for path in smk.input},
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
