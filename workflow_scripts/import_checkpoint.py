"""Convert one released robustness-library checkpoint to ours (rule import_checkpoint)."""

from robuniv import io
from robuniv.checkpoints import import_robustness_checkpoint
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    import_robustness_checkpoint(
        smk.input.source,
        arch=smk.wildcards.arch,
        sha256=smk.params.sha256,
        output=smk.output.ckpt,
        trust_on_first_use=smk.params.trust_on_first_use,
        extra={
            "provenance": io.provenance(study=smk.wildcards.study, eps=float(smk.wildcards.eps))
        },
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
