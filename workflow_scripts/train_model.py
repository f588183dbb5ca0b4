"""Adversarially train one model (rule train_model); data-parallel through torchrun if asked."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    stage = {
        "arch": smk.wildcards.arch,
        "eps": float(smk.wildcards.eps),
        "run": int(smk.wildcards.run),
        "model": dict(smk.params.model),
        "dataset": dict(smk.params.dataset),
        "train": dict(smk.params.train),
        "checkpoint": smk.output.ckpt,
        "provenance": io.provenance(
            study=smk.wildcards.study, model=smk.params.model, train=smk.params.train
        ),
    }
    nproc = smk.params.train["nproc_per_node"]
    if nproc > 1:
        from robuniv.launch import launch_train

        launch_train(
            stage,
            nproc_per_node=nproc,
            threads=smk.threads,
            device=smk.params.device,
            log_file=smk.log[0],
        )
        return
    from robuniv.pipeline import train_stage
    from robuniv.runtime import setup_torch

    train_stage(**stage, device=setup_torch(smk.threads, smk.params.device))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
