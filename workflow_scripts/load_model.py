"""A RobustBench, timm, torchvision or local model as a robuniv checkpoint (rule load_model)."""

from robuniv import io
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    from robuniv.zoo import load_model_stage

    load_model_stage(
        smk.params.entry,
        cache_dir=smk.params.cache,
        dataset=smk.params.dataset,
        output=smk.output.ckpt,
        provenance=io.provenance(study=smk.wildcards.study, entry=smk.params.entry),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
