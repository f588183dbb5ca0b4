"""Salman et al. checkpoint table, download with resume, verified strict import (robuniv.checkpoints).

Checkpoints in the published layout are built here from registry models and pickled with
torch.save; downloads run against a loopback HTTP server.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import Tensor

from robuniv.checkpoints import (
    CHECKPOINT_SOURCES,
    _main,
    download,
    import_robustness_checkpoint,
    source_for,
)
from robuniv.io import sha256_file
from robuniv.models import ARCHITECTURES, ModelSpec, RobustModel, build_model, load_checkpoint

PAPER_ARCHS = [
    "resnet18",
    "resnet50",
    "wide_resnet50_2",
    "wide_resnet50_4",
    "resnext50_32x4d",
    "densenet161",
    "vgg16_bn",
]
# robustness wraps these torchvision nets once more, so their keys carry one more "model.".
EXTRA_MODEL_LEVEL = {"resnext50_32x4d", "densenet161", "vgg16_bn"}
HF = "https://huggingface.co/madrylab/robust-imagenet-models/resolve/main/"


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied afterwards: full-size checkpoints reach 900 MB."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def _randomised(model: RobustModel, seed: int) -> RobustModel:
    """Fill BatchNorm statistics and affine terms and biases, which init leaves constant."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.model.parameters(), *model.model.buffers()]:
            if tensor.dim() == 1 and tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def salman_state(model: RobustModel, *, extra_level: bool) -> dict[str, Tensor]:
    """The published layout: DataParallel prefix, attacker duplicates sharing the tensors."""
    net = "model.model." if extra_level else "model."
    state = {}
    for key, value in model.model.state_dict().items():
        state[f"module.{net}{key}"] = value
        state[f"module.attacker.{net}{key}"] = value
    for key, value in model.normalizer.state_dict().items():
        state[f"module.normalizer.{key}"] = value
        state[f"module.attacker.normalize.{key}"] = value
    return state


def write_release(path: Path, state: dict[str, Tensor], *, key: str = "model") -> str:
    optimizer = {"state": {}, "param_groups": [{"lr": 0.001, "momentum": 0.9, "params": [0]}]}
    torch.save({key: state, "epoch": 90, "optimizer": optimizer, "schedule": None}, path)
    return sha256_file(path)


# wide_resnet50_4 has wide_resnet50_2's layout at twice the width: a 1 GB round trip that
# adds 20 s and no key the other Wide ResNet lacks.
@pytest.mark.parametrize("arch", [a for a in PAPER_ARCHS if a != "wide_resnet50_4"])
def test_published_layout_imports_strictly_with_equal_weights_and_outputs(
    arch: str, scratch: Path
) -> None:
    original = _randomised(build_model(ModelSpec(arch, 1000), seed=0), seed=1)
    src = scratch / f"{arch}_l2_eps3.ckpt"
    digest = write_release(src, salman_state(original, extra_level=arch in EXTRA_MODEL_LEVEL))
    out = scratch / "imported.pt"
    import_robustness_checkpoint(src, arch=arch, sha256=digest, output=out, extra={"eps": 3.0})
    src.unlink()

    loaded, meta = load_checkpoint(out)
    expected = original.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], value) for key, value in expected.items())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = original(x)
        assert torch.isfinite(reference).all()
        assert torch.equal(loaded(x), reference)
    assert meta["epoch"] == 90
    record = meta["robuniv"]
    assert record["spec"]["arch"] == arch
    assert (record["source_file"], record["source_sha256"]) == (src.name, digest)
    assert (record["source_epoch"], record["eps"]) == (90, 3.0)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, Tensor]:
    return salman_state(
        _randomised(build_model(ModelSpec("resnet18", 1000), seed=0), seed=1), extra_level=False
    )


@pytest.fixture
def resnet18_release(resnet18_state: dict[str, Tensor], scratch: Path) -> tuple[Path, str]:
    src = scratch / "resnet18_l2_eps3.ckpt"
    return src, write_release(src, resnet18_state)


def test_state_dict_key_is_read_when_model_key_is_absent(
    resnet18_state: dict[str, Tensor], scratch: Path
) -> None:
    src = scratch / "release.ckpt"
    digest = write_release(src, resnet18_state, key="state_dict")
    model = import_robustness_checkpoint(
        src, arch="resnet18", sha256=digest, output=scratch / "out.pt"
    )
    assert torch.equal(model.model.fc.weight, resnet18_state["module.model.fc.weight"])


def test_wrong_sha256_is_rejected_naming_both_hashes_and_writes_nothing(
    resnet18_release: tuple[Path, str], scratch: Path
) -> None:
    src, digest = resnet18_release
    wrong = "ab" * 32
    with pytest.raises(ValueError, match=f"sha256 mismatch: expected {wrong}, got {digest}"):
        import_robustness_checkpoint(src, arch="resnet18", sha256=wrong, output=scratch / "o.pt")
    assert sorted(p.name for p in scratch.iterdir()) == [src.name]


def test_hash_is_checked_before_unpickling(scratch: Path) -> None:
    # Bytes that would fail to unpickle: the hash error proves nothing was unpickled.
    src = scratch / "garbage.ckpt"
    src.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        import_robustness_checkpoint(src, arch="resnet18", sha256="0" * 64, output=scratch / "o.pt")


def test_truncated_file_with_its_own_hash_is_not_a_readable_checkpoint(
    resnet18_release: tuple[Path, str], scratch: Path
) -> None:
    src, _ = resnet18_release
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    digest = hashlib.sha256(data[: len(data) // 2]).hexdigest()
    with pytest.raises(ValueError, match=f"{re.escape(str(src))} is not a readable checkpoint"):
        import_robustness_checkpoint(src, arch="resnet18", sha256=digest, output=scratch / "o.pt")
    assert not (scratch / "o.pt").exists()
    assert [p.name for p in scratch.iterdir()] == [src.name]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", r"missing \['model.fc.bias'\], unexpected \[\]"),
        ("add", r"missing \[\], unexpected \['model.fc.extra'\]"),
        ("reshape", "size mismatch for model.fc.weight"),
    ],
)
def test_weights_that_do_not_fit_are_a_strict_error_naming_the_keys(
    resnet18_state: dict[str, Tensor], scratch: Path, change: str, message: str
) -> None:
    state = dict(resnet18_state)
    if change == "drop":
        del state["module.model.fc.bias"], state["module.attacker.model.fc.bias"]
    elif change == "add":
        state["module.model.fc.extra"] = torch.zeros(3)
    else:
        state["module.model.fc.weight"] = torch.zeros(10, 512)
    src = scratch / "release.ckpt"
    digest = write_release(src, state)
    with pytest.raises(ValueError, match=message):
        import_robustness_checkpoint(src, arch="resnet18", sha256=digest, output=scratch / "o.pt")
    assert not (scratch / "o.pt").exists()


def test_normaliser_other_than_imagenet_is_rejected(
    resnet18_state: dict[str, Tensor], scratch: Path
) -> None:
    state = dict(resnet18_state)
    state["module.normalizer.new_mean"] = torch.full((3, 1, 1), 0.5)
    src = scratch / "release.ckpt"
    digest = write_release(src, state)
    with pytest.raises(ValueError, match="normaliser new_mean is"):
        import_robustness_checkpoint(src, arch="resnet18", sha256=digest, output=scratch / "o.pt")
    assert not (scratch / "o.pt").exists()


def test_file_without_hash_is_refused_unless_trusted_on_first_use(
    resnet18_release: tuple[Path, str], scratch: Path
) -> None:
    src, _ = resnet18_release
    with pytest.raises(ValueError, match="trust_on_first_use"):
        import_robustness_checkpoint(src, arch="resnet18", sha256=None, output=scratch / "o.pt")
    assert [p.name for p in scratch.iterdir()] == [src.name]


def test_trust_on_first_use_records_the_hash_then_rejects_a_changed_file(
    resnet18_release: tuple[Path, str], scratch: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src, digest = resnet18_release
    with caplog.at_level(logging.WARNING, logger="robuniv.checkpoints"):
        import_robustness_checkpoint(
            src, arch="resnet18", sha256=None, output=scratch / "a.pt", trust_on_first_use=True
        )
    assert "trusting this copy on first use" in caplog.text
    sidecar = scratch / f"{src.name}.sha256"
    assert sidecar.read_text().split() == [digest, src.name]
    import_robustness_checkpoint(  # the recorded hash now verifies the same file
        src, arch="resnet18", sha256=None, output=scratch / "b.pt", trust_on_first_use=True
    )
    with open(src, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match=f"expected {digest}"):
        import_robustness_checkpoint(
            src, arch="resnet18", sha256=None, output=scratch / "c.pt", trust_on_first_use=True
        )
    assert not (scratch / "c.pt").exists()


def test_extra_may_not_overwrite_the_import_record(
    resnet18_release: tuple[Path, str], scratch: Path
) -> None:
    src, digest = resnet18_release
    with pytest.raises(ValueError, match="source_sha256"):
        import_robustness_checkpoint(
            src,
            arch="resnet18",
            sha256=digest,
            output=scratch / "o.pt",
            extra={"source_sha256": "x"},
        )


def test_command_line_import_writes_a_loadable_checkpoint(
    resnet18_release: tuple[Path, str], scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, digest = resnet18_release
    out = scratch / "cli.pt"
    _main(["import", str(src), "resnet18", str(out), "--sha256", digest])
    assert capsys.readouterr().out.strip() == str(out)
    model, _ = load_checkpoint(out)
    assert model.spec == ModelSpec("resnet18", 1000)


def test_command_line_fetch_of_an_unreleased_model_lists_the_released_ones(
    scratch: Path,
) -> None:
    with pytest.raises(SystemExit, match=r"vgg16_bn@0\.25.*vgg16_bn@3"):
        _main(["fetch", "vgg16_bn", "0.25", str(scratch)])
    assert list(scratch.iterdir()) == []


# --- the table --------------------------------------------------------------------------


def test_table_holds_every_released_pair_of_the_paper_with_its_url() -> None:
    full = ["0", "0.25", "0.5", "1", "3"]
    expected = {f"{arch}@{eps}" for arch in PAPER_ARCHS[:4] for eps in full}
    expected |= {f"{arch}@{eps}" for arch in PAPER_ARCHS[4:] for eps in ("0", "3")}
    assert set(CHECKPOINT_SOURCES.names()) == expected
    for name in CHECKPOINT_SOURCES:
        source = CHECKPOINT_SOURCES.get(name)
        stem = "densenet" if source.arch == "densenet161" else source.arch
        assert source.file == f"{stem}_l2_eps{name.split('@')[1]}.ckpt"
        assert source.url == HF + source.file
        assert source.arch in ARCHITECTURES
        assert source.sha256 is None or re.fullmatch("[0-9a-f]{64}", source.sha256)


def test_source_for_reads_eps_as_a_number() -> None:
    assert source_for("resnet50", 3) is source_for("resnet50", 3.0)
    assert source_for("resnet18", 0.25).file == "resnet18_l2_eps0.25.ckpt"


def test_source_for_unreleased_pair_lists_the_available_ones() -> None:
    with pytest.raises(KeyError, match=r"'vgg16_bn@0\.5'.*densenet161@0.*wide_resnet50_4@3"):
        source_for("vgg16_bn", 0.5)


# --- download ---------------------------------------------------------------------------

PAYLOAD = (
    torch.randint(0, 256, (10_000,), generator=torch.Generator().manual_seed(0))
    .to(torch.uint8)
    .numpy()
    .tobytes()
)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(ThreadingHTTPServer):
    honor_range = True
    cut_after: int | None = None

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ranges: list[str | None] = []


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD; honours `Range: bytes=N-` unless told not to; can cut the body short."""

    server: _Server

    def do_GET(self) -> None:
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        start = 0
        if requested and self.server.honor_range:
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: self.server.cut_after])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/file.ckpt"


def _fetch(srv: _Server, dest: Path, sha256: str | None = PAYLOAD_SHA256) -> Path:
    return download(_url(srv), dest, sha256=sha256, chunk=1000, progress=False, timeout=5)


def test_download_writes_the_verified_file_and_no_part(server: _Server, scratch: Path) -> None:
    dest = scratch / "sub" / "file.ckpt"
    assert _fetch(server, dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert list(dest.parent.iterdir()) == [dest]
    assert server.ranges == [None]


def test_download_resumes_a_partial_file_with_a_range_request(
    server: _Server, scratch: Path
) -> None:
    dest = scratch / "file.ckpt"
    (scratch / "file.ckpt.part").write_bytes(PAYLOAD[:3000])
    _fetch(server, dest)
    assert server.ranges == ["bytes=3000-"]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_its_part_and_the_next_call_resumes_it(
    server: _Server, scratch: Path
) -> None:
    dest = scratch / "file.ckpt"
    server.cut_after = 2500
    with pytest.raises(ConnectionError, match="stopped at byte 2500 of 10000"):
        _fetch(server, dest)
    assert (scratch / "file.ckpt.part").stat().st_size == 2500
    assert not dest.exists()
    server.cut_after = None
    _fetch(server, dest)
    assert server.ranges == [None, "bytes=2500-"]
    assert dest.read_bytes() == PAYLOAD


def test_hash_mismatch_deletes_the_part_and_names_file_and_hashes(
    server: _Server, scratch: Path
) -> None:
    wrong = "0" * 64
    with pytest.raises(
        ValueError, match=f"file.ckpt: sha256 mismatch: expected {wrong}, got {PAYLOAD_SHA256}"
    ):
        _fetch(server, scratch / "file.ckpt", sha256=wrong)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("part", "honor_range"),
    [(b"x" * 3000, False), (PAYLOAD + b"junk", True)],
    ids=["server-ignores-range", "part-longer-than-file"],
)
def test_download_restarts_cleanly_when_the_part_cannot_be_resumed(
    server: _Server, scratch: Path, part: bytes, honor_range: bool
) -> None:
    server.honor_range = honor_range
    dest = scratch / "file.ckpt"
    (scratch / "file.ckpt.part").write_bytes(part)
    _fetch(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert list(scratch.iterdir()) == [dest]


def test_download_without_hash_still_completes(server: _Server, scratch: Path) -> None:
    assert _fetch(server, scratch / "f.ckpt", sha256=None).read_bytes() == PAYLOAD


def test_download_refuses_urls_other_than_http(scratch: Path) -> None:
    with pytest.raises(ValueError, match="http or https"):
        download("file:///etc/hostname", scratch / "x", progress=False)
