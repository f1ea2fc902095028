from __future__ import annotations

import pytest

from mlcd.domain.overrides import apply_overrides
from mlcd.errors import SpecError

RAW = {
    "spec": {
        "tuning": {"maxTrials": 6, "parameters": [{"name": "lr", "max": 0.1}]},
        "trainer": {"args": ["--epochs=10"]},
    },
    "metadata": {"name": "m"},
}


@pytest.mark.parametrize(
    ("assignment", "path", "expected"),
    [
        ("tuning.maxTrials=2", ("spec", "tuning", "maxTrials"), 2),
        ("spec.tuning.maxTrials=3", ("spec", "tuning", "maxTrials"), 3),
        ("tuning.parameters[0].max=0.5", ("spec", "tuning", "parameters", 0, "max"), 0.5),
        ("trainer.args[0]=--epochs=2", ("spec", "trainer", "args", 0), "--epochs=2"),
        ("trainer.args[1]=--fault=x", ("spec", "trainer", "args", 1), "--fault=x"),
        ("trainer.args[5]=--fault=x", ("spec", "trainer", "args", 5), None),
        ("gate.min=0.9", ("spec", "gate", "min"), 0.9),
        ("metadata.name=other", ("metadata", "name"), "other"),
        ("suspend=true", ("spec", "suspend"), True),
        ("tuning.trialArgs=[--epochs=1]", ("spec", "tuning", "trialArgs"), ["--epochs=1"]),
    ],
)
def test_set(assignment, path, expected):
    if expected is None:
        with pytest.raises(SpecError) as caught:
            apply_overrides(RAW, [assignment])
        assert "no such place" in str(caught.value)
        return
    out = apply_overrides(RAW, [assignment])
    node = out
    for key in path:
        node = node[key]
    assert node == expected
    assert RAW["spec"]["tuning"]["maxTrials"] == 6  # the input is not changed


@pytest.mark.parametrize("bad", ["novalue", "=3", "tuning..x=1", "a[b]=1"])
def test_unreadable_assignments(bad):
    with pytest.raises(SpecError):
        apply_overrides(RAW, [bad])
