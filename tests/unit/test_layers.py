"""Similarity across depth: layer specs, multi-layer extraction, HDF5 layout, table, Fig 9."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from robuniv import io
from robuniv.activations import extract, extract_layers
from robuniv.compare import PENULTIMATE, layer_cka_table, model_layers, similarity_table
from robuniv.config import ConfigError, ModelKey
from robuniv.data import ImageArrayDataset
from robuniv.layer_config import check_study_layers, fig9_pair
from robuniv.layers import LayerError, capture, reduce, relative_depths, resolve
from robuniv.models import build_model, save_checkpoint
from robuniv.pipeline import activations_stage, model_spec
from robuniv.plan import load_config
from robuniv.plots import depth_curves, draw_figure, plot_representational
from robuniv.stats import spearman_table

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "tests" / "workflow" / "config.smoke.yaml"
RESNET_LAYERS = ["layer1", "layer2", "layer3"]
VGG_LAYERS = ["features.13", "features.23", "features.33"]


def small_model(arch: str = "resnet18", seed: int = 0):
    return build_model(model_spec(arch, "fashion_mnist", width=0.0625), seed=seed).eval()


def images(n: int = 12, seed: int = 0) -> ImageArrayDataset:
    rng = np.random.default_rng(seed)
    return ImageArrayDataset(
        rng.integers(0, 256, size=(n, 1, 32, 32), dtype=np.uint8), np.arange(n) % 10
    )


def test_unknown_module_names_the_nearest_ones() -> None:
    net = small_model().model
    with pytest.raises(LayerError) as err:
        resolve(net, "layer5", "resnet18")
    message = str(err.value)
    assert "unknown layer 'layer5' in resnet18" in message
    for near in ("'layer1'", "'layer2'", "'layer3'", "'layer4'"):
        assert near in message
    with pytest.raises(LayerError, match="suffix must be ':in'"):
        resolve(net, "fc:out")


def test_capture_of_many_layers_matches_one_layer_hooks_and_the_logits() -> None:
    model = small_model()
    x = images()[0][0].unsqueeze(0).repeat(3, 1, 1, 1)
    with torch.no_grad():
        (l1, l3, pen), logits = capture(model, x, ["layer1", "layer3", "fc:in"])
        alone, _ = capture(model, x, ["layer3"])
        expected = model(x)
    assert torch.equal(logits, expected)
    assert torch.equal(l3, alone[0])
    assert l1.shape[:2] == (3, 4) and l1.dim() == 4  # width 1/16: 64 / 16 channels
    assert pen.shape == (3, 32)


def test_reduce_pools_or_flattens_spatial_maps_and_keeps_vectors() -> None:
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    pooled = reduce(maps, "avgpool")
    assert pooled.shape == (2, 3)
    assert torch.equal(pooled, maps.mean(dim=(2, 3)))
    assert reduce(maps, "flatten").shape == (2, 12)
    vectors = torch.ones(2, 5)
    assert torch.equal(reduce(vectors, "avgpool"), vectors)
    with pytest.raises(ValueError, match="reduce must be one of"):
        reduce(maps, "maxpool")


def test_relative_depth_orders_layers_and_counts_an_input_before_its_module() -> None:
    model = small_model()
    x = torch.rand(1, 1, 32, 32)
    depths = relative_depths(model, x, [*RESNET_LAYERS, "fc:in", "fc", "conv1"])
    ordered = [depths[s] for s in ("conv1", *RESNET_LAYERS, "fc:in", "fc")]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered)
    assert depths["fc"] == 1.0
    # Calls, not modules: a BasicBlock runs its one ReLU module twice.
    calls = []
    leaves = [m for m in model.model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in leaves]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    assert len(calls) > len(leaves)
    assert depths["fc:in"] == pytest.approx((len(calls) - 1) / len(calls))


def test_extract_layers_keeps_the_feature_layer_bytes_and_reduces_the_others() -> None:
    model, data = small_model(), images()
    features, logits = extract(model, data, layer="fc:in", batch_size=5)
    # The CIFAR stem of Fashion-MNIST's ResNet-18: layer1 keeps the 32 x 32 input size.
    flat = [4 * 32 * 32, 8 * 16 * 16, 16 * 8 * 8]
    for mode, dims in (("avgpool", [4, 8, 16]), ("flatten", flat)):
        f, z, extras = extract_layers(
            model, data, layer="fc:in", extra_layers=RESNET_LAYERS, reduction=mode, batch_size=5
        )
        assert np.array_equal(f, features) and np.array_equal(z, logits)
        assert [e.shape for e in extras] == [(len(data), d) for d in dims]
        assert all(e.dtype == np.float32 for e in extras)


def test_a_module_input_and_the_feature_layer_itself_can_be_extra_layers() -> None:
    model, data = small_model(), images()
    f, _, (l1_in, pen) = extract_layers(
        model, data, layer="fc:in", extra_layers=["layer1:in", "fc:in"], batch_size=5
    )
    assert np.array_equal(pen, f)
    assert l1_in.shape == (len(data), 4)  # the stem's output, pooled


@pytest.fixture(scope="module")
def activation_file(tmp_path_factory, fashion_mnist_root) -> tuple[Path, list[ModelKey]]:
    """A real activations_stage file: resnet18 and vgg16_bn, three extra layers each."""
    folder = tmp_path_factory.mktemp("activations")
    models = [ModelKey("resnet18", 1.0, 0), ModelKey("vgg16_bn", 1.0, 0)]
    checkpoints = {}
    for i, key in enumerate(models):
        path = folder / f"{key.arch}.pt"
        save_checkpoint(path, small_model(key.arch, seed=i), epoch=0)
        checkpoints[key] = path
    output = folder / "eps1.h5"
    activations_stage(
        checkpoints=checkpoints,
        regular=pd.DataFrame({"index": np.arange(40) * 7}),
        inverted={},
        dataset={"name": "fashion_mnist", "root": str(fashion_mnist_root)},
        extraction={"batch_size": 16, "amp": False, "channels_last": False},
        layers={},
        device="cpu",
        output=output,
        provenance={"test": True},
        extra_layers={"resnet18": RESNET_LAYERS, "vgg16_bn": VGG_LAYERS},
    )
    return output, models


def test_activation_file_keeps_the_old_layout_and_adds_one_dataset_per_layer(
    activation_file,
) -> None:
    path, (resnet, _) = activation_file
    regular = io.read_h5(path, "resnet18/run0/regular")
    assert set(regular) == {"features", "logits", "labels", "indices"}  # what readers read
    assert regular["features"].shape == (40, 32)
    with h5py.File(path, "r") as fh:
        layers = fh["resnet18/run0/regular/layers"]
        assert sorted(layers) == sorted(RESNET_LAYERS)
        depths = [layers[s].attrs["depth"] for s in RESNET_LAYERS]
        assert depths == sorted(depths) and 0 < depths[0] < depths[-1] < 1
        assert [layers[s].attrs["position"] for s in RESNET_LAYERS] == [0, 1, 2]
        assert layers["layer2"].shape == (40, 8)
        assert fh["vgg16_bn/run0/regular/layers"]["features.33"].attrs["layer"] == "features.33"
    info = model_layers(path, resnet)
    assert info.feature == "fc:in" and info.extras == tuple(RESNET_LAYERS)
    assert info.depth("fc:in") > info.depth("layer3")
    assert io.read_h5_meta(path, "resnet18/run0")["layers_reduce"] == "avgpool"


def test_similarity_table_adds_layer_rows_and_keeps_the_penultimate_ones(activation_file) -> None:
    path, models = activation_file
    measures = ["cka", "jaccard", "agreement"]
    kwargs = {"study": "s", "eps": 1.0, "jaccard_k": (5,)}
    plain = similarity_table(path, models, "regular", measures, **kwargs)
    table = similarity_table(
        path, models, "regular", measures, layer_measures=["cka", "jaccard"], **kwargs
    )
    penultimate = table[table["layer"] == PENULTIMATE].reset_index(drop=True)
    pd.testing.assert_frame_equal(penultimate, plain)
    extra = table[table["layer"] != PENULTIMATE]
    assert list(pd.unique(extra["layer"])) == ["L1", "L2", "L3"]
    assert set(extra["measure"]) == {"cka", "jaccard"}  # agreement reads the logits only
    # By layer, then measure as configured.
    assert list(extra["layer_a"]) == [s for s in RESNET_LAYERS for _ in measures[:2]]
    assert list(extra["layer_b"]) == [s for s in VGG_LAYERS for _ in measures[:2]]
    assert extra["depth"].between(0, 1).all()
    assert extra.groupby("layer")["depth"].first().is_monotonic_increasing
    with pytest.raises(ValueError, match="not representational"):
        similarity_table(path, models, "regular", measures, layer_measures=["agreement"], **kwargs)


def test_layer_cka_table_covers_every_layer_pair_by_depth(activation_file) -> None:
    path, (resnet, vgg) = activation_file
    table = layer_cka_table(path, resnet, vgg, study="s")
    assert len(table) == 4 * 4
    assert list(pd.unique(table["layer_a"])) == [*RESNET_LAYERS, "fc:in"]
    assert list(pd.unique(table["layer_b"])) == [*VGG_LAYERS, "classifier:in"]
    assert table["value"].between(0, 1).all()
    same = layer_cka_table(path, resnet, resnet, study="s")
    diagonal = same[same["layer_a"] == same["layer_b"]]["value"]
    assert np.allclose(diagonal, 1.0)


def smoke_study() -> dict:
    config = load_config(SMOKE)
    return config["studies"]["smoke"]


def test_study_layer_checks_name_the_bad_value() -> None:
    study = smoke_study()
    check_study_layers("smoke", study)
    assert fig9_pair(study) == (ModelKey("resnet18", 1.0, 0), ModelKey("vgg16_bn", 1.0, 0))

    bad = copy.deepcopy(study)
    bad["layers"]["resnet18"] = ["layer1", "layer2", "layr3"]
    with pytest.raises(ConfigError, match=r"layers.resnet18: unknown layer 'layr3'.*'layer3'"):
        check_study_layers("smoke", bad)

    uneven = copy.deepcopy(study)
    uneven["layers"]["vgg16_bn"] = VGG_LAYERS[:2]
    with pytest.raises(ConfigError, match="same number"):
        check_study_layers("smoke", uneven)

    unmeasured = copy.deepcopy(study)
    unmeasured["figures"]["fig9"]["measures"] = ["rtd"]
    with pytest.raises(ConfigError, match=r"fig9.measures \['rtd'\]"):
        check_study_layers("smoke", unmeasured)

    pair = copy.deepcopy(study)
    pair["figures"]["fig9"]["pair"] = ["resnet50", "vgg16_bn"]
    with pytest.raises(ConfigError, match="fig9.pair"):
        check_study_layers("smoke", pair)


def test_default_config_lists_as_many_layers_for_every_arch() -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for study in config["studies"].values():
        counts = {arch: len(study["layers"][arch]) for arch in study["archs"]}
        assert set(counts.values()) == {3}, counts


def depth_table() -> pd.DataFrame:
    """Similarity rows as compute_similarity writes them, with three extra layers."""
    rows = []
    archs = ("resnet18", "vgg16_bn", "densenet161")
    layers = (("L1", 0.2), ("L2", 0.5), ("L3", 0.75), (PENULTIMATE, 0.99))
    for inputs, eps, (a, b), (layer, depth), (measure, k) in itertools.product(
        ("regular", "inverted"),
        (0.0, 1.0),
        itertools.combinations(archs, 2),
        layers,
        (("cka", -1), ("jaccard", 10), ("agreement", -1)),
    ):
        if measure == "agreement" and layer != PENULTIMATE:
            continue
        rows.append(
            {
                "study": "s",
                "inputs": inputs,
                "source": "none",
                "source_run": -1,
                "eps": eps,
                "model_a": a,
                "run_a": 0,
                "model_b": b,
                "run_b": 0,
                "layer": layer,
                "layer_a": layer,
                "layer_b": layer,
                "depth": depth,
                "measure": measure,
                "k": k,
                "value": 0.9 - 0.5 * depth + 0.1 * eps,
            }
        )
    return pd.DataFrame(rows)


def cka_grid() -> pd.DataFrame:
    specs = [("layer1", 0.2), ("layer2", 0.5), ("fc:in", 0.98)]
    rows = [
        {
            "study": "s",
            "inputs": "regular",
            "eps": 1.0,
            "model_a": "resnet18",
            "run_a": 0,
            "model_b": "vgg16_bn",
            "run_b": 0,
            "layer_a": la,
            "depth_a": da,
            "layer_b": lb,
            "depth_b": db,
            "value": 1 - abs(da - db),
        }
        for (la, da), (lb, db) in itertools.product(specs, specs)
    ]
    return pd.DataFrame(rows)


def test_depth_curves_average_cross_architecture_pairs_per_layer() -> None:
    curves = depth_curves(depth_table(), "regular", "cka")
    assert list(curves["layer"]) == ["L1", "L2", "L3", PENULTIMATE] * 2
    assert (curves["pairs"] == 3).all()
    first = curves.iloc[0]
    assert first["y"] == pytest.approx(0.9 - 0.5 * 0.2)


def test_fig9_draws_lines_per_eps_and_the_layer_heatmap() -> None:
    options = {"measures": ["cka", "jaccard"], "jaccard_k": 10}
    fig = draw_figure("fig9", {"similarity": depth_table(), "layer_cka": cka_grid()}, options)
    panels = [ax for ax in fig.axes if ax.get_xlabel() == "relative depth"]
    assert len(panels) == 4
    assert all(len(ax.lines) == 2 for ax in panels)  # eps 0 and 1
    heatmap = next(ax for ax in fig.axes if ax.images)
    assert heatmap.images[0].get_array().shape == (3, 3)
    assert [t.get_text() for t in heatmap.get_yticklabels()] == ["layer1", "layer2", "fc:in"]


def test_figures_and_statistics_of_the_paper_read_the_penultimate_rows_only() -> None:
    sim = depth_table()
    penultimate = sim[sim["layer"] == PENULTIMATE]
    pd.testing.assert_frame_equal(spearman_table(sim), spearman_table(penultimate))
    spearman = spearman_table(penultimate)
    fig = plot_representational(sim, spearman, measures=("cka",), k=10)
    boxes = sum(len(ax.patches) for ax in fig.axes)
    reference = plot_representational(penultimate, spearman, measures=("cka",), k=10)
    assert boxes == sum(len(ax.patches) for ax in reference.axes)


def test_a_passed_module_name_check_is_remembered_and_a_failed_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fashion_mnist_root: Path
) -> None:
    from robuniv import layer_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    study = load_config(REPO / "config.yaml")["studies"]["fashion_mnist"]
    study["dataset"]["root"] = str(fashion_mnist_root)
    layer_config.check_module_names("s", study)
    remembered = set(yaml.safe_load((tmp_path / "robuniv" / "layer-names.json").read_text()))
    assert len(remembered) == len(study["archs"])

    def fail(*args: object) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(layer_config, "_check_arch", fail)
    layer_config.check_module_names("s", study)  # from the cache: no network is built
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bad = copy.deepcopy(study)
    bad["layers"]["resnet18"] = ["layer1", "layer2", "layr3"]
    for _ in range(2):  # a failure is not remembered
        with pytest.raises(ConfigError, match="layr3"):
            layer_config.check_module_names("s", bad)
