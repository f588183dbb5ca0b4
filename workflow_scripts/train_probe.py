"""A linear probe on one model's frozen penultimate features (rule train_probe)."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import train_probe_stage
    from robuniv.runtime import setup_torch

    train_probe_stage(
        features_file=smk.input.features,
        activations_file=smk.input.activations,
        probe=smk.params.probes,
        device=setup_torch(smk.threads, smk.params.device),
        output=smk.output.probe,
        provenance=io.provenance(
            study=smk.wildcards.study,
            arch=smk.wildcards.arch,
            eps=float(smk.wildcards.eps),
            run=int(smk.wildcards.run),
            probes=smk.params.probes,
        ),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
