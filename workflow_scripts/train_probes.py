"""A linear probe per model of one eps on its frozen features (rule train_probes)."""

from robuniv import io
from robuniv.config import model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import train_probes_stage
    from robuniv.runtime import setup_torch

    train_probes_stage(
        models=model_keys(smk.params.models),
        features_file=smk.input.features,
        activations_file=smk.input.activations,
        probe=smk.params.probes,
        device=setup_torch(smk.threads, smk.params.device),
        output=smk.output.probes,
        provenance=io.provenance(
            study=smk.wildcards.study,
            eps=float(smk.wildcards.eps),
            probes=smk.params.probes,
            features_sha256=io.sha256_file(smk.input.features),
            activations_sha256=io.sha256_file(smk.input.activations),
        ),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
