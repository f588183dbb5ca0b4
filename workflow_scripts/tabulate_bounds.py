"""Observed agreement and its four bounds per model pair on regular images (Fig 7)."""

from robuniv import io
from robuniv.compare import REGULAR_GROUP
from robuniv.config import ModelKey
from robuniv.log import to_file
from robuniv.stats import bounds_table


def main(smk) -> None:
    to_file(smk.log[0])
    models = [ModelKey(arch, float(eps), int(run)) for arch, eps, run in smk.params.models]
    predictions = {}
    for model, path in zip(models, smk.input, strict=True):
        regular = io.read_h5(path, REGULAR_GROUP)
        predictions[model] = (regular["logits"], regular["labels"])
    table = bounds_table(predictions, study=smk.wildcards.study)
    io.write_table(smk.output.table, table, io.provenance(study=smk.wildcards.study))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
