"""Observed agreement and its four bounds per model pair on regular images (Fig 7)."""

from robuniv import io
from robuniv.config import format_eps, model_keys
from robuniv.groups import activation_group
from robuniv.log import to_file
from robuniv.stats import bounds_table


def main(smk) -> None:
    to_file(smk.log[0])
    files = dict(zip(smk.params.eps, smk.input, strict=True))
    predictions = {}
    for model in model_keys(smk.params.models):
        regular = io.read_h5(
            files[format_eps(model.eps)], activation_group(model, None), finite=True
        )
        predictions[model] = (regular["logits"], regular["labels"])
    table = bounds_table(predictions, study=smk.wildcards.study)
    io.write_table(smk.output.table, table, io.provenance(study=smk.wildcards.study))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
