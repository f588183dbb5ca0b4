"""Agreement of probe pairs vs their classifiers on held-out images (rule compare_probes)."""

from robuniv import io
from robuniv.config import format_eps, model_keys
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.probes import probe_agreement_table

    files = dict(zip(smk.params.eps, smk.input.probes, strict=True))
    probes = {}
    for model in model_keys(smk.params.models):
        stored = io.read_h5(files[format_eps(model.eps)], model.name)
        probes[model] = (stored["probe_logits"], stored["classifier_logits"], stored["labels"])
    table = probe_agreement_table(probes, study=smk.wildcards.study)
    meta = io.provenance(
        study=smk.wildcards.study,
        probes_sha256={path: io.sha256_file(path) for path in smk.input.probes},
    )
    io.write_table(smk.output.table, table, meta)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
