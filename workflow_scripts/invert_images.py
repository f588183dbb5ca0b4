"""Inverted images of one model (rule invert_images)."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import invert_stage
    from robuniv.runtime import setup_torch

    device = setup_torch(smk.threads, smk.params.device)
    invert_stage(
        checkpoint=smk.input.ckpt,
        pairs=io.read_table(smk.input.pairs),
        dataset=smk.params.dataset,
        inversion=smk.params.inversion,
        layers=smk.params.layers,
        device=device,
        output=smk.output.images,
        provenance=io.provenance(
            study=smk.wildcards.study,
            arch=smk.wildcards.arch,
            eps=float(smk.wildcards.eps),
            run=int(smk.wildcards.run),
            inversion=smk.params.inversion,
            checkpoint_sha256=io.sha256_file(smk.input.ckpt),
        ),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
