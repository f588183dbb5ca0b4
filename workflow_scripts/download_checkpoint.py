"""Download one released checkpoint with resume and hash check (rule download_checkpoint)."""

from robuniv.checkpoints import download
from robuniv.log import to_file


def main(smk) -> None:
    to_file(smk.log[0])
    download(smk.params.url, smk.output[0], sha256=smk.params.sha256)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 - injected by Snakemake
