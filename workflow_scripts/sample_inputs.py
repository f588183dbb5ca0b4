"""The study's regular-image sample and inversion pairs (rule sample_inputs)."""

from robuniv import io
from robuniv.log import to_file
from robuniv.pipeline import sample_stage


def main(smk) -> None:
    to_file(smk.log[0])
    regular, pairs = sample_stage(dataset=smk.params.dataset, inputs=smk.params.inputs)
    meta = io.provenance(
        study=smk.wildcards.study, dataset=smk.params.dataset, inputs=smk.params.inputs
    )
    io.write_table(smk.output.regular, regular, meta)
    io.write_table(smk.output.pairs, pairs, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
