"""Penultimate features of the probes' training images for one model (rule extract_probe_features)."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.pipeline import probe_features_stage
    from robuniv.runtime import setup_torch

    probes = smk.params.probes
    probe_features_stage(
        checkpoint=smk.input.ckpt,
        dataset=smk.params.dataset,
        n_train=probes["n_train"],
        seed=probes["seed"],
        batch_size=smk.params.batch_size,
        layers=smk.params.layers,
        device=setup_torch(smk.threads, smk.params.device),
        output=smk.output.features,
        provenance=io.provenance(
            study=smk.wildcards.study,
            arch=smk.wildcards.arch,
            eps=float(smk.wildcards.eps),
            run=int(smk.wildcards.run),
            probes=probes,
            checkpoint_sha256=io.sha256_file(smk.input.ckpt),
        ),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
