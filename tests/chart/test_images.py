"""The Dockerfiles, checked statically: no image builder runs in the test suite (building them
needs base images from a registry and the operator's and torch's wheels; docs/install.md).
What can be known without building is checked against the chart and the project."""

from __future__ import annotations

import fnmatch
import pathlib
import re
import tomllib

import pytest
import yaml

from testenv.manifests import CHART

REPO = pathlib.Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
SECRET_NAMES = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL)", re.IGNORECASE)


def instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    return steps[starts[-1] :]


def ignored(relative: str) -> bool:
    """Whether .dockerignore leaves ``relative`` out of the build context (last match wins)."""
    result = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if (
            fnmatch.fnmatch(relative, pattern)
            or fnmatch.fnmatch(relative, pattern + "/*")
            or pattern == "**"
        ):
            result = not negate
    return result


DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))


def test_the_images_are_the_operator_and_the_example_trainer():
    assert [p.parent.name for p in DOCKERFILES] == ["mnist-trainer", "operator"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_a_dockerfile_builds_from_sources_in_its_context(dockerfile):
    steps = instructions(dockerfile)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in steps if w == "ARG" and "=" in a}
    for word, rest in steps:
        if word == "FROM":
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            assert ":" in image and not image.endswith(":latest"), f"{image}: pin a tag"
        if word in ("COPY", "ADD"):
            assert word == "COPY", "ADD fetches URLs and unpacks archives: COPY only"
            parts = [p for p in rest.split() if not p.startswith("--")]
            if "--from=" in rest:
                continue
            for source in parts[:-1]:
                path = REPO / source.rstrip("/")
                assert path.exists(), f"{source} is not in the repository"
                files = [f for f in path.rglob("*.py")] if path.is_dir() else [path]
                assert files, source
                left_out = [f for f in files if ignored(str(f.relative_to(REPO)))]
                assert left_out == [], f"{source}: left out by .dockerignore"
        if word in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", rest) or [rest.split()[0]]
            assert not [n for n in names if SECRET_NAMES.search(n)], f"{word} {rest}"
        if word == "RUN":
            assert "--constraint requirements/lock.txt" in rest or "pip" not in rest, rest
    user = [rest for word, rest in final_stage(steps) if word == "USER"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["runAsUser"]
    assert user[-1] == f"{uid}:{uid}", "the chart runs the image as this numeric user"
    env = " ".join(rest for word, rest in final_stage(steps) if word == "ENV")
    assert "HOME=/tmp" in env, "the root filesystem is read-only; /tmp is writable"


def test_the_context_leaves_out_local_state():
    for path in (".venv", ".git", "examples/mnist/data", "tests", ".mlcd"):
        assert ignored(path), path
    for path in ("operator/mlcd/cli.py", "requirements/lock.txt", "pyproject.toml"):
        assert not ignored(path), path


def test_the_operator_image_runs_mlcd_operator_without_torch():
    steps = instructions(IMAGES / "operator" / "Dockerfile")
    final = dict(final_stage(steps))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert final["ENTRYPOINT"] == '["mlcd"]' and "mlcd" in project["scripts"]
    assert final["CMD"] == '["operator"]'
    assert not [d for d in project["dependencies"] if d.startswith("torch")]
    python = re.search(r"python:(\d+\.\d+)", dict(steps)["ARG"])
    assert python and f">={python.group(1)}" == project["requires-python"]
    # The state folder the chart mounts, and the ports it probes and scrapes.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "MLCD_STATE_DIR=/var/lib/mlcd" in final["ENV"]
    assert final["EXPOSE"].split() == [str(values["metrics"]["port"]), str(values["healthPort"])]


def test_the_trainer_image_extends_the_operator_image_for_the_local_engine():
    steps = instructions(IMAGES / "mnist-trainer" / "Dockerfile")
    assert steps[0] == ("ARG", "BASE=python:3.11-slim-bookworm")
    assert ("FROM", "${BASE}") in steps
    run = " ".join(rest for word, rest in steps if word == "RUN")
    assert "/opt/mlcd/bin/pip install" in run and "./examples/mnist" in run
    example = yaml.safe_load((REPO / "examples" / "mnist" / "modelpipeline.yaml").read_text())
    assert example["spec"]["trainer"]["command"][:3] == ["python", "-m", "mnist_trainer"]
