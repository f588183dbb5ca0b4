"""Where each (model, input set) lives inside a study's per-eps activation file (SPEC 4).

One HDF5 file per (study, eps) holds every model of that eps: group `<arch>/run<r>/regular`
for the regular images and `<arch>/run<r>/inverted/<source arch>/run<s>` for the images
inverted through model `source`; further layers of a (model, input set) are datasets of its
subgroup `layers`, named by their layer spec. No heavy imports: torch jobs and similarity jobs share it.
"""

from __future__ import annotations

from robuniv.config import ModelKey

REGULAR_GROUP = "regular"


def inverted_group(source: ModelKey) -> str:
    """Input-set name of the images inverted through model `source`."""
    return f"inverted/{source.name}"


def input_group(source: ModelKey | None) -> str:
    """Input-set name: the regular images (source None) or `source`'s inverted set."""
    return REGULAR_GROUP if source is None else inverted_group(source)


def activation_group(model: ModelKey, source: ModelKey | None) -> str:
    """HDF5 group of `model`'s activations on the input set of `source` (None: regular)."""
    return f"{model.name}/{input_group(source)}"


LAYERS_GROUP = "layers"


def layers_group_of(group: str) -> str:
    """Subgroup of an activation group holding its extra layers, one dataset per spec."""
    return f"{group}/{LAYERS_GROUP}"
