"""Adversarially train one model (rule train_model)."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import train_stage
    from robuniv.runtime import setup_torch

    device = setup_torch(smk.threads, smk.params.device)
    train_stage(
        arch=smk.wildcards.arch,
        eps=float(smk.wildcards.eps),
        run=int(smk.wildcards.run),
        model=smk.params.model,
        dataset=smk.params.dataset,
        train=smk.params.train,
        checkpoint=smk.output.ckpt,
        device=device,
        provenance=io.provenance(
            study=smk.wildcards.study, model=smk.params.model, train=smk.params.train
        ),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
