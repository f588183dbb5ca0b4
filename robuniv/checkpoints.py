"""Import the Salman et al. (2020) robust ImageNet checkpoints into robuniv's format (SPEC 1).

A shipped table (`robuniv/data/salman_checkpoints.tsv`) gives file, URL and sha256 per
(arch, eps). `download` fetches a file with resume; `import_robustness_checkpoint` verifies
its sha256 *before* unpickling it (these files need `weights_only=False`), loads the weights
strictly into the registry architecture and writes a `robuniv.models.save_checkpoint` file.

Command line::

    python -m robuniv.checkpoints fetch ARCH EPS DEST_DIR
    python -m robuniv.checkpoints import SRC ARCH OUT --sha256 HASH
"""

from __future__ import annotations

import csv
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPResponse
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from robuniv.config import format_eps
from robuniv.io import atomic_path, sha256_file
from robuniv.log import progress_kwargs
from robuniv.registry import Registry

if TYPE_CHECKING:
    from robuniv.models import RobustModel

log = logging.getLogger(__name__)

SOURCES_TABLE = "data/salman_checkpoints.tsv"
_COLUMNS = ["arch", "eps", "file", "url", "sha256"]
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Metadata that import_robustness_checkpoint writes itself into the checkpoint's "robuniv" dict.
_IMPORT_KEYS = ("source_file", "source_sha256", "source_epoch")


@dataclass(frozen=True)
class CheckpointSource:
    """One published checkpoint (SPEC 1); `sha256` is None where no hash is known."""

    arch: str
    eps: float
    file: str
    url: str
    sha256: str | None


CHECKPOINT_SOURCES: Registry[CheckpointSource] = Registry("checkpoint source")


def _check_sha256(value: str, where: str = "sha256") -> str:
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise ValueError(f"{where} must be 64 hexadecimal digits, got {value!r}")
    return digest


def source_key(arch: str, eps: float) -> str:
    """Registry name "arch@eps" with eps spelled as everywhere else (`format_eps`)."""
    return f"{arch}@{format_eps(eps)}"


def _register_sources() -> None:
    text = (resources.files("robuniv") / SOURCES_TABLE).read_text(encoding="utf-8")
    rows = csv.DictReader(
        (line for line in text.splitlines() if not line.startswith("#")), delimiter="\t"
    )
    if rows.fieldnames != _COLUMNS:
        raise ValueError(f"{SOURCES_TABLE}: columns {rows.fieldnames}, expected {_COLUMNS}")
    for row in rows:
        source = CheckpointSource(
            arch=row["arch"],
            eps=float(row["eps"]),
            file=row["file"],
            url=row["url"],
            sha256=_check_sha256(row["sha256"], f"{SOURCES_TABLE}: sha256 of {row['file']}")
            if row["sha256"]
            else None,
        )
        CHECKPOINT_SOURCES.register(source_key(source.arch, source.eps), source)


_register_sources()


def source_for(arch: str, eps: float) -> CheckpointSource:
    """The published checkpoint of `arch` at L2 robustness `eps`.

    Raises KeyError listing the available "arch@eps" entries (models missing from the
    release, e.g. vgg16_bn at 0.25, are trained instead; SPEC 1).
    """
    return CHECKPOINT_SOURCES.get(source_key(arch, eps))


def _open(url: str, offset: int, timeout: float) -> HTTPResponse:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    chunk: int = 1 << 20,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming a `.part` left by an earlier call.

    The `.part` is renamed to `dest` only when complete and, with `sha256`, verified. A
    transfer that stops early keeps the `.part` and raises ConnectionError (call again to
    resume); a hash mismatch deletes the `.part` and raises ValueError. A server that
    ignores the Range request (answers 200) restarts the download from the first byte.

    Parameters
    ----------
    url : str
        http(s) URL.
    dest : str or Path
        Final file; its folder is created.
    sha256 : str or None
        Expected hex digest; None downloads unverified (the hash is logged).
    chunk : int
        Bytes per read.
    progress : bool
        Show a tqdm bar (`robuniv.log.progress_kwargs`).
    timeout : float
        Seconds a connection or read may stall.

    Returns
    -------
    Path
        `dest`.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"url must be http or https, got {url!r}")
    expected = None if sha256 is None else _check_sha256(sha256)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        # 416: the .part is as long as the file or longer, so it cannot be trusted.
        if not offset or err.code != 416:
            raise
        log.warning("%s: server refused to resume at byte %d; starting again", dest.name, offset)
        offset = 0
        response = _open(url, 0, timeout)
    with response:
        if offset and response.status != 206:
            log.warning("%s: server ignored the range request; starting again", dest.name)
            offset = 0
        elif offset and not response.headers.get("Content-Range", "").startswith(
            f"bytes {offset}-"
        ):
            raise ConnectionError(
                f"{url}: asked for bytes from {offset}, got range "
                f"{response.headers.get('Content-Range')!r}"
            )
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        with (
            open(part, "ab" if offset else "wb") as fh,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
                **progress_kwargs(),
            ) as bar,
        ):
            while block := response.read(chunk):
                fh.write(block)
                received += len(block)
                bar.update(len(block))
    # http.client returns a short body without raising, so completeness is checked here.
    if total is not None and received != total:
        raise ConnectionError(
            f"{url}: transfer stopped at byte {received} of {total}; {part} is kept and the "
            "next call resumes it"
        )
    actual = sha256_file(part)
    if expected is not None and actual != expected:
        part.unlink()
        raise ValueError(
            f"{dest.name}: sha256 mismatch: expected {expected}, got {actual} "
            f"(from {url}); deleted {part}"
        )
    if expected is None:
        log.warning("%s: downloaded without a hash to check; sha256 %s", dest.name, actual)
    os.replace(part, dest)
    log.info("downloaded %s (%d bytes, sha256 %s)", dest, received, actual)
    return dest


def _few(keys: Sequence[str]) -> str:
    return f"{list(keys[:5])}{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}"


def import_robustness_checkpoint(
    src: str | Path,
    *,
    arch: str,
    num_classes: int = 1000,
    sha256: str | None,
    output: str | Path,
    trust_on_first_use: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> RobustModel:
    """Verify, load strictly and convert a robustness-library ImageNet checkpoint (SPEC 1).

    The file's sha256 is checked before it is unpickled. Without `sha256`, the file is
    refused unless `trust_on_first_use`: then the hash recorded in `<src>.sha256` is checked,
    or, when there is none yet, the file is trusted with a warning and its hash recorded
    there once the import succeeds. Weights come from `ckpt["model"]` (else
    `ckpt["state_dict"]`), keys "module.model.<k>" or "module.model.model.<k>" (the extra
    level of the torchvision nets robustness wraps: densenet, vgg, resnext) plus the
    normaliser; the "module.attacker.*" duplicates are dropped.

    Parameters
    ----------
    src : str or Path
        The published file.
    arch : str
        Registry architecture; built as its ImageNet variant at width 1.
    num_classes : int
    sha256 : str or None
        Expected hex digest of `src`.
    output : str or Path
        Checkpoint written atomically by `robuniv.models.save_checkpoint`; nothing is written
        when any check fails.
    trust_on_first_use : bool
    extra : Mapping or None
        More metadata for the checkpoint (e.g. url, eps); must not use the keys written
        here: source_file, source_sha256, source_epoch.

    Returns
    -------
    RobustModel
        The imported model, in eval mode.

    Raises
    ------
    ValueError
        Hash mismatch or no hash, unreadable file, weights that do not fit `arch` (missing,
        unexpected or misshapen keys) or a normaliser other than ImageNet's.
    """
    src = Path(src)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_IMPORT_KEYS))
    if clash:
        raise ValueError(f"extra must not contain {clash}: the import writes those keys")
    # torch and the models load only here: the workflow reads the source table at DAG time.
    import torch

    from robuniv.models import ModelSpec, build_model, save_checkpoint, split_robustness_state

    spec = ModelSpec(arch, num_classes)
    sidecar = src.with_name(src.name + ".sha256")
    first_use = False
    if sha256 is not None:
        expected = _check_sha256(sha256)
    elif trust_on_first_use and sidecar.exists():
        # sha256sum's format: the digest, two spaces, the file name.
        expected = _check_sha256(sidecar.read_text(encoding="utf-8")[:64], f"hash in {sidecar}")
    elif trust_on_first_use:
        first_use = True
    else:
        raise ValueError(
            f"{src}: no sha256 to verify it against; pass the published sha256 "
            "(or trust_on_first_use=True to record the hash of this copy)"
        )
    actual = sha256_file(src)
    if first_use:
        log.warning("%s: no known sha256; trusting this copy on first use (%s)", src, actual)
    elif actual != expected:
        raise ValueError(f"{src}: sha256 mismatch: expected {expected}, got {actual}")

    # The releases are pickled with dill and do not load with weights_only=True; unpickling
    # may run code, which is why the hash was verified above.
    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - damaged bytes fail with many error types
        raise ValueError(
            f"{src} is not a readable checkpoint ({type(err).__name__}: {err})"
        ) from None
    state = ckpt.get("model", ckpt.get("state_dict")) if isinstance(ckpt, dict) else None
    if not isinstance(state, Mapping):
        raise ValueError(  # noqa: TRY004 - a defect of the file, not of an argument
            f"{src} is not a readable checkpoint: no 'model' or 'state_dict' dict"
        )
    epoch = ckpt.get("epoch")
    try:
        normalizer, net = split_robustness_state(state)
    except ValueError as err:
        raise ValueError(f"{src}: {err}") from None
    del ckpt, state
    if net and all(key.startswith("model.") for key in net):
        net = {key.removeprefix("model."): value for key, value in net.items()}
    weights = {f"normalizer.{k}": v for k, v in normalizer.items()}
    weights.update({f"model.{k}": v for k, v in net.items()})

    model = build_model(spec)
    wanted = model.state_dict().keys()
    missing = sorted(wanted - weights.keys())
    unexpected = sorted(weights.keys() - wanted)
    if missing or unexpected:
        raise ValueError(
            f"{src}: weights do not fit {arch}: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}"
        )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{src}: weights do not fit {arch}: {err}") from None
    for name, values in (("new_mean", spec.mean), ("new_std", spec.std)):
        loaded = getattr(model.normalizer, name)
        if not torch.allclose(loaded, torch.tensor(values).view(-1, 1, 1), atol=1e-6):
            raise ValueError(
                f"{src}: normaliser {name} is {loaded.flatten().tolist()}, "
                f"expected ImageNet's {list(values)}"
            )

    record: dict[str, Any] = {"source_file": src.name, "source_sha256": actual}
    if isinstance(epoch, int):
        record["source_epoch"] = epoch
    save_checkpoint(
        output,
        model.eval(),
        epoch=epoch if isinstance(epoch, int) else 0,
        extra={**extra, **record},
    )
    if first_use:
        with atomic_path(sidecar) as tmp:
            tmp.write_text(f"{actual}  {src.name}\n", encoding="utf-8")
        log.warning("%s: recorded sha256 %s in %s", src, actual, sidecar)
    log.info("imported %s as %s (%s)", src, output, arch)
    return model


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m robuniv.checkpoints", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download a published checkpoint into DEST_DIR")
    fetch_cmd.add_argument("arch")
    fetch_cmd.add_argument("eps", type=float)
    fetch_cmd.add_argument("dest_dir", type=Path)
    import_cmd = sub.add_parser("import", help="verify SRC and convert it to robuniv's format")
    import_cmd.add_argument("src", type=Path)
    import_cmd.add_argument("arch")
    import_cmd.add_argument("output", type=Path)
    import_cmd.add_argument("--sha256")
    import_cmd.add_argument("--trust-on-first-use", action="store_true")
    import_cmd.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "fetch":
            source = source_for(args.arch, args.eps)
            path = download(source.url, args.dest_dir / source.file, sha256=source.sha256)
        else:
            import_robustness_checkpoint(
                args.src,
                arch=args.arch,
                num_classes=args.num_classes,
                sha256=args.sha256,
                output=args.output,
                trust_on_first_use=args.trust_on_first_use,
            )
            path = args.output
    except (KeyError, ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    print(path)


if __name__ == "__main__":
    _main()
