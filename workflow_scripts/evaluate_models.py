"""Clean and adversarial accuracy of every model of one eps (rule evaluate_models)."""

from robuniv import io
from robuniv.config import model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import evaluate_stage
    from robuniv.runtime import setup_torch

    checkpoints = dict(zip(model_keys(smk.params.models), smk.input.ckpts, strict=True))
    table = evaluate_stage(
        checkpoints=checkpoints,
        dataset=smk.params.dataset,
        evaluate=smk.params.evaluate,
        device=setup_torch(smk.threads, smk.params.device),
    )
    meta = io.provenance(
        study=smk.wildcards.study,
        evaluate=smk.params.evaluate,
        checkpoints_sha256={path: io.sha256_file(path) for path in smk.input.ckpts},
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
