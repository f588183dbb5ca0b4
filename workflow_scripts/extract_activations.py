"""Penultimate features and logits of one model on every input set of its eps."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import activations_stage
    from robuniv.runtime import setup_torch

    device = setup_torch(smk.threads, smk.params.device)
    activations_stage(
        checkpoint=smk.input.ckpt,
        regular=io.read_table(smk.input.regular),
        inverted={name: smk.input[name] for name in smk.params.inverted},
        dataset=smk.params.dataset,
        batch_size=smk.params.batch_size,
        layers=smk.params.layers,
        device=device,
        output=smk.output.activations,
        provenance=io.provenance(
            study=smk.wildcards.study,
            arch=smk.wildcards.arch,
            eps=float(smk.wildcards.eps),
            run=int(smk.wildcards.run),
            checkpoint_sha256=io.sha256_file(smk.input.ckpt),
        ),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
