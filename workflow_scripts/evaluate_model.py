"""Clean and adversarial accuracy of one model (rule evaluate_model)."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import evaluate_stage
    from robuniv.runtime import setup_torch

    device = setup_torch(smk.threads, smk.params.device)
    table = evaluate_stage(
        checkpoint=smk.input.ckpt,
        eps=float(smk.wildcards.eps),
        run=int(smk.wildcards.run),
        dataset=smk.params.dataset,
        evaluate=smk.params.evaluate,
        device=device,
    )
    meta = io.provenance(
        study=smk.wildcards.study,
        evaluate=smk.params.evaluate,
        checkpoint_sha256=io.sha256_file(smk.input.ckpt),
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
