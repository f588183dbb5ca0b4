"""Readers and checkers of the container and environment recipes, for tests/containers.

The Apptainer definition file is parsed here (spython's parser accepts unknown sections and
header keys silently), and the torch pins, Python version and extras are read from each of
./run.sh, containers/Dockerfile, containers/robuniv.def and envs/robuniv.yaml so that the
tests can compare them.
"""

from __future__ import annotations

import glob
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "containers" / "Dockerfile"
DEFFILE = REPO / "containers" / "robuniv.def"
ENVFILE = REPO / "envs" / "robuniv.yaml"
RUN_SH = REPO / "run.sh"
PYPROJECT = REPO / "pyproject.toml"

# Apptainer's definition-file sections (apptainer.org/docs/user/latest/definition_files.html),
# without the SCIF %app* sections, which this project does not use.
SECTIONS = {
    "setup",
    "files",
    "environment",
    "post",
    "runscript",
    "startscript",
    "test",
    "labels",
    "help",
    "arguments",
}
# Header keywords and the bootstrap agents that take them.
BOOTSTRAP_AGENTS = {
    "library",
    "docker",
    "docker-daemon",
    "docker-archive",
    "oci",
    "oci-archive",
    "shub",
    "oras",
    "localimage",
    "scratch",
    "busybox",
    "debootstrap",
    "yum",
    "dnf",
    "zypper",
    "arch",
}
HEADER_KEYS = {
    "bootstrap",
    "from",
    "stage",
    "registry",
    "namespace",
    "fingerprints",
    "osversion",
    "mirrorurl",
    "updateurl",
    "include",
    "confurl",
    "setopt",
    "product",
    "user",
    "regcode",
    "productpgp",
    "registerurl",
    "otherurl0",
}
# Agents whose From is an image reference: it must name a tag or digest, not float on latest.
IMAGE_AGENTS = {"library", "docker", "docker-daemon", "oci", "shub", "oras"}
IMAGE_REF = re.compile(
    r"^(?:[a-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@sha256:[0-9a-f]{64})?$"
)
PIN = re.compile(r"\b(torch==[\w.+]+)\s+(torchvision==[\w.+]+)")
EXTRAS = re.compile(r"\.\[([\w,-]+)\]")


@dataclass
class DefFile:
    header: dict[str, str] = field(default_factory=dict)
    # section name -> (argument after the name, body lines)
    sections: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def body(self, name: str) -> str:
        return "\n".join(self.sections.get(name, ("", []))[1])


def parse_def(text: str) -> DefFile:
    """Header and sections of a definition file; every departure from the format in `errors`."""
    parsed = DefFile()
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if raw.startswith("%"):
            name, _, argument = line[1:].partition(" ")
            if name not in SECTIONS:
                parsed.errors.append(f"line {number}: unknown section %{name}")
            elif name in parsed.sections:
                parsed.errors.append(f"line {number}: section %{name} appears twice")
            current = name
            parsed.sections.setdefault(name, (argument.strip(), []))
            continue
        if current is not None:
            parsed.sections[current][1].append(raw)
            continue
        if not line or line.startswith("#"):
            continue
        key, colon, value = line.partition(":")
        key = key.strip().lower()
        if not colon or not re.fullmatch(r"[a-z0-9]+", key):
            parsed.errors.append(f"line {number}: header line is not 'Key: value': {line!r}")
        elif key not in HEADER_KEYS:
            parsed.errors.append(f"line {number}: unknown header key {key!r}")
        elif key in parsed.header:
            parsed.errors.append(f"line {number}: header key {key!r} appears twice")
        else:
            parsed.header[key] = value.strip()
    return parsed


def check_def(text: str, repo: Path = REPO) -> list[str]:
    """Everything wrong with a definition file for this project (empty: nothing)."""
    parsed = parse_def(text)
    errors = list(parsed.errors)
    agent = parsed.header.get("bootstrap")
    if agent is None:
        errors.append("header: no Bootstrap")
    elif agent not in BOOTSTRAP_AGENTS:
        errors.append(f"header: unknown bootstrap agent {agent!r}")
    elif agent in IMAGE_AGENTS:
        ref = parsed.header.get("from")
        match = IMAGE_REF.match(ref or "")
        if not ref:
            errors.append(f"header: Bootstrap {agent} needs From")
        elif not match:
            errors.append(f"header: From {ref!r} is not an image reference")
        elif "@sha256:" not in ref and match["tag"] in (None, "latest"):
            errors.append(f"header: From {ref!r} names no tag (or latest)")
    for name in ("post", "test", "help", "labels", "environment"):
        if not parsed.body(name).strip():
            errors.append(f"section %{name} is missing or empty")
    for line in parsed.body("files").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = shlex.split(line)
        if len(words) > 2:
            errors.append(f"%files: more than source and destination: {line!r}")
            continue
        if not glob.glob(str(repo / words[0])):
            errors.append(f"%files: {words[0]} does not exist in the repository")
        if len(words) == 2 and not words[1].startswith("/"):
            errors.append(f"%files: destination {words[1]} is not absolute")
    for line in parsed.body("labels").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and len(line.split(None, 1)) != 2:
            errors.append(f"%labels: {line!r} is not 'KEY VALUE'")
    post = parsed.body("post")
    if pins(post) != pins(RUN_SH.read_text()):
        errors.append(
            f"%post: torch pins {pins(post)} differ from run.sh's {pins(RUN_SH.read_text())}"
        )
    if extras(post) != extras(RUN_SH.read_text()):
        errors.append(
            f"%post: extras {extras(post)} differ from run.sh's {extras(RUN_SH.read_text())}"
        )
    return errors


def pins(text: str) -> dict[str, tuple[str, str]]:
    """Default torch/torchvision pins per architecture in a shell `case "$(uname -m)"` block:
    {"arm": (...), "other": (...)}, read from lines such as `aarch64 | arm64) pins="..." ;;`."""
    found = {}
    for line in text.splitlines():
        match = PIN.search(line)
        if not match:
            continue
        label = line.strip().split(")", 1)[0]
        kind = "arm" if "aarch64" in label else "other" if label.strip() == "*" else None
        if kind is not None:
            found[kind] = (match[1], match[2])
    return found


def extras(text: str) -> set[frozenset[str]]:
    """The extras of every `.[a,b]` (the local package) that text installs."""
    return {frozenset(match.split(",")) for match in EXTRAS.findall(text)}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def dockerfile_args(text: str) -> dict[str, str]:
    """Default values of the ARGs (the first definition of each name)."""
    defaults: dict[str, str] = {}
    for word, rest in dockerfile_instructions(text):
        if word == "ARG":
            name, _, value = rest.partition("=")
            defaults.setdefault(name, value.strip('"'))
    return defaults


def dockerfile_copies(text: str) -> set[str]:
    """Repository paths that the Dockerfile COPYs from the build context."""
    sources = set()
    for word, rest in dockerfile_instructions(text):
        if word == "COPY" and "--from" not in rest:
            sources.update(p.rstrip("/") for p in shlex.split(rest)[:-1])
    return sources


def def_files(text: str) -> set[str]:
    """Repository paths that the definition file's %files copies."""
    lines = parse_def(text).body("files").splitlines()
    return {shlex.split(line)[0].rstrip("/") for line in lines if line.split("#", 1)[0].strip()}


def python_of_image(ref: str) -> str | None:
    """'3.11' from python:3.11-slim-bookworm (None for other images)."""
    match = re.match(r"^(?:docker\.io/(?:library/)?)?python:(\d+\.\d+)", ref)
    return match[1] if match else None


def env_pip(env: dict) -> list[str]:
    for item in env["dependencies"]:
        if isinstance(item, dict) and "pip" in item:
            return list(item["pip"])
    return []


def env_python(env: dict) -> str | None:
    for item in env["dependencies"]:
        if isinstance(item, str) and re.match(r"^python\s*[=<>]", item):
            return re.sub(r"^python\s*=*\s*", "", item)
    return None


def load_env(path: Path = ENVFILE) -> dict:
    return yaml.safe_load(path.read_text())
