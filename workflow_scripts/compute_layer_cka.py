"""Linear CKA of every layer of one model with every layer of another (rule compute_layer_cka)."""

from robuniv import io
from robuniv.compare import layer_cka_table
from robuniv.config import model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    a, b = model_keys(smk.params.pair)
    table = layer_cka_table(smk.input.activations, a, b, study=smk.wildcards.study)
    meta = io.provenance(
        study=smk.wildcards.study,
        pair=smk.params.pair,
        activations_sha256=io.sha256_file(smk.input.activations),
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
