from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from robuniv.config import (
    ConfigError,
    ModelKey,
    check_study,
    extreme_eps,
    extreme_models,
    fig2_models,
    format_eps,
    models_at,
    study_models,
)
from robuniv.data import DATASETS

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "rules" / "schemas" / "config.schema.yaml"


def schema_enum(name: str) -> list[str]:
    return yaml.safe_load(SCHEMA.read_text())["$defs"][name]["enum"]


def test_schema_names_equal_the_registries() -> None:
    from robuniv.models import ARCHITECTURES
    from robuniv.similarity import MEASURES

    assert sorted(schema_enum("arch")) == ARCHITECTURES.names()
    assert sorted(schema_enum("measure")) == MEASURES.names()
    dataset_enum = yaml.safe_load(SCHEMA.read_text())["$defs"]["study"]["properties"]["dataset"]
    assert sorted(dataset_enum["properties"]["name"]["enum"]) == DATASETS.names()


@pytest.mark.parametrize(
    ("eps", "text"), [(0, "0"), (0.25, "0.25"), (0.5, "0.5"), (1.0, "1"), (3, "3")]
)
def test_eps_has_one_spelling(eps: float, text: str) -> None:
    assert format_eps(eps) == text


def test_eps_must_be_a_number() -> None:
    with pytest.raises(ConfigError, match="'one'"):
        format_eps("one")  # type: ignore[arg-type]


def validated(study: dict) -> dict:
    config = {"studies": {"s": copy.deepcopy(study)}}
    validate(config, str(SCHEMA))
    return config["studies"]["s"]


def test_schema_fills_paper_defaults(fashion_mnist_root: Path) -> None:
    study = validated(
        {
            "dataset": {"name": "fashion_mnist", "root": str(fashion_mnist_root)},
            "archs": ["resnet18", "vgg16"],
            "eps": [0, 3],
        }
    )
    assert study["train"]["epochs"] == 90 and study["train"]["lr"] == 0.1
    assert study["inversion"]["steps"] == 1000 and study["inversion"]["batch_size"] == 64
    assert study["similarity"]["rtd"] == {"trials": 10, "batch": 500, "seed": 0}
    assert study["similarity"]["jaccard_k"] == [10, 100, 500]
    assert study["runs"] == [0]
    check_study("s", study)


def test_default_config_is_valid_and_consistent(fashion_mnist_root: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    for name, study in config["studies"].items():
        check_study(name, study)


def test_relations_the_schema_cannot_check_are_named(fashion_mnist_root: Path) -> None:
    base = {
        "dataset": {"name": "fashion_mnist", "root": str(fashion_mnist_root)},
        "archs": ["resnet18", "vgg16"],
        "eps": [0, 1],
    }
    study = validated({**base, "inputs": {"n_regular": 50, "n_inverted": 40}})
    with pytest.raises(
        ConfigError, match=r"jaccard_k \[100, 500\] must be below inputs.n_inverted = 40"
    ):
        check_study("s", study)
    study = validated({**base, "similarity": {"measures": ["cka"]}})
    with pytest.raises(
        ConfigError, match=r"figures.fig4.measures \['jaccard', 'procrustes_sim', 'rtd'\]"
    ):
        check_study("s", study)


def test_analysis_options_are_checked_against_the_study(fashion_mnist_root: Path) -> None:
    base = {
        "dataset": {"name": "fashion_mnist", "root": str(fashion_mnist_root)},
        "archs": ["resnet18", "vgg16"],
        "eps": [0, 0.5, 1],
    }
    study = validated(base)
    assert extreme_eps(study) == [0.0, 1.0]
    assert [m.eps for m in extreme_models(study)] == [0.0, 0.0, 1.0, 1.0]
    assert fig2_models(study) == [
        ModelKey("resnet18", 0.0, 0),
        ModelKey("resnet18", 1.0, 0),
        ModelKey("vgg16", 0.0, 0),
        ModelKey("vgg16", 1.0, 0),
    ]
    study = validated({**base, "figures": {"fig2": {"archs": ["densenet161"]}}})
    with pytest.raises(ConfigError, match=r"figures.fig2.archs \['densenet161'\]"):
        check_study("s", study)
    study = validated({**base, "probes": {"n_train": 10, "val_fraction": 0.01}})
    with pytest.raises(ConfigError, match="probes.val_fraction 0.01 of probes.n_train 10"):
        check_study("s", study)


def test_models_are_enumerated_per_eps() -> None:
    study = {"archs": ["a", "b"], "eps": [0, 0.5], "runs": [0, 1]}
    assert len(study_models(study)) == 8
    assert models_at(study, 0.5) == [
        ModelKey("a", 0.5, 0),
        ModelKey("a", 0.5, 1),
        ModelKey("b", 0.5, 0),
        ModelKey("b", 0.5, 1),
    ]
    assert ModelKey("a", 0.5, 1).name == "a/run1"


def test_models_entries_join_the_grid_and_are_checked(fashion_mnist_root: Path) -> None:
    from snakemake.exceptions import WorkflowError

    from robuniv.config import loaded_entry, model_names

    rb = {"id": "rb", "source": "robustbench", "name": "Standard", "dataset": "cifar10",
          "threat_model": "L2", "eps": 1}  # fmt: skip
    base = {
        "dataset": {"name": "fashion_mnist", "root": str(fashion_mnist_root)},
        "archs": ["resnet18"],
        "eps": [0, 1],
        "models": [rb, {"source": "train", "arch": "vgg16", "eps": 0}],
    }
    study = validated(base)
    check_study("s", study)
    assert study_models(study) == [
        ModelKey("resnet18", 0.0, 0),
        ModelKey("resnet18", 1.0, 0),
        ModelKey("rb", 1.0, 0),
        ModelKey("vgg16", 0.0, 0),
    ]
    assert model_names(study) == ["resnet18", "rb", "vgg16"]
    assert loaded_entry(study, ModelKey("rb", 1.0, 0))["name"] == "Standard"
    assert loaded_entry(study, ModelKey("vgg16", 0.0, 0)) is None
    for change, message in (
        ({**rb, "eps": 0.5}, r"models\[0\] \('rb'\): eps 0.5 is not in the study's eps"),
        ({**rb, "id": "resnet18"}, "resnet18 at eps 1 run 0 is already given by archs"),
        (
            {"id": "f", "source": "file", "arch": "resnet18", "path": "/no/such.pt", "eps": 0},
            "path '/no/such.pt' is not a file",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            check_study("s", validated({**base, "models": [change]}))
    with pytest.raises(WorkflowError, match="'threat_model' is a required property"):
        validated({**base, "models": [{k: v for k, v in rb.items() if k != "threat_model"}]})
