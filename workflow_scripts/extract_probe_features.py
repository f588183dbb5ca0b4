"""Training-split features of every model of one eps, for the probes (rule extract_probe_features)."""

from robuniv import io
from robuniv.config import model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import probe_features_stage
    from robuniv.runtime import setup_torch

    probes = smk.params.probes
    probe_features_stage(
        checkpoints=dict(zip(model_keys(smk.params.models), smk.input.ckpts, strict=True)),
        dataset=smk.params.dataset,
        n_train=probes["n_train"],
        seed=probes["seed"],
        extraction=smk.params.extraction,
        layers=smk.params.layers,
        device=setup_torch(smk.threads, smk.params.device),
        output=smk.output.features,
        provenance=io.provenance(
            study=smk.wildcards.study,
            eps=float(smk.wildcards.eps),
            probes=probes,
            extraction=smk.params.extraction,
        ),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
