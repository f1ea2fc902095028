"""The steps shipped as compiled component YAML (components/) load as KFP loads them and
match the pipeline's definition."""

from __future__ import annotations

import pathlib

import pytest
from kfp.components import load_component_from_file

from mlcd.pipeline.kubeflow.components import components, write

FOLDER = pathlib.Path(__file__).resolve().parents[2] / "components"


@pytest.mark.parametrize("name", sorted(components()))
def test_each_component_file_loads_with_kfp(name: str) -> None:
    loaded = load_component_from_file(str(FOLDER / f"{name}.yaml"))
    spec = loaded.component_spec
    assert spec.name == name
    assert set(spec.inputs or {}) >= {"context", "engine"}
    assert spec.inputs is not None and spec.inputs["engine"].default == ""


def test_the_checked_in_files_are_what_the_definition_compiles_to(tmp_path: pathlib.Path) -> None:
    fresh = {p.name: p.read_text() for p in write(tmp_path)}
    shipped = {p.name: p.read_text() for p in FOLDER.glob("*.yaml")}
    assert shipped == fresh, "components/ is stale: python -m mlcd.pipeline.kubeflow.components"
