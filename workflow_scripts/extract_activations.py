"""Features and logits of every model of one eps on every input set (rule extract_activations)."""

from robuniv import io
from robuniv.config import model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import activations_stage
    from robuniv.runtime import setup_torch

    models = model_keys(smk.params.models)
    activations_stage(
        checkpoints=dict(zip(models, smk.input.ckpts, strict=True)),
        regular=io.read_table(smk.input.regular),
        inverted=dict(zip(models, smk.input.inverted, strict=True)),
        dataset=smk.params.dataset,
        extraction=smk.params.extraction,
        layers=smk.params.layers,
        device=setup_torch(smk.threads, smk.params.device),
        output=smk.output.activations,
        provenance=io.provenance(
            study=smk.wildcards.study,
            eps=float(smk.wildcards.eps),
            extraction=smk.params.extraction,
            layers=smk.params.layers,
            depth=smk.params.depth,
        ),
        extra_layers=smk.params.depth["layers"],
        reduction=smk.params.depth["reduce"],
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
