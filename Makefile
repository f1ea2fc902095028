# The two commands a new user needs:
#   make run    set up, then run the whole loop on the embedded default (examples/mnist)
#   make test   set up, bootstrap the real test components, then lint, type-check and test
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DATASET := examples/mnist/data/mnist.npz

.PHONY: run test env serving-tools components lint pytest crd docs

run: env serving-tools $(DATASET)
	$(BIN)/mlcd run examples/mnist/modelpipeline.yaml

test: env components lint pytest

env:
	@hack/setup-env

# What rollouts on this machine need: HAProxy (the router) and Prometheus (Debian's packages).
serving-tools:
	@hack/bootstrap --only serving --quiet

components:
	@hack/bootstrap

$(DATASET): | env
	$(BIN)/mnist-dataset $(DATASET)

lint: env
	$(BIN)/ruff check operator tests examples benchmarks hack/generate.py
	$(BIN)/ruff format --check operator tests examples benchmarks hack/generate.py
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: env
	$(BIN)/pytest $(PYTEST_ARGS)

# The CRD is generated from the models; a test fails when the checked-in file drifts. The chart's
# copy and docs/reference.md follow it.
crd: env
	$(BIN)/python -m mlcd.k8s.crd --output crds/mlcd.io_modelpipelines.yaml
	$(BIN)/python hack/generate.py crds reference

# Files generated from others (hack/generate.py): the chart's CRDs and values table,
# docs/reference.md, deploy/components/monitoring. tests/chart fails when one drifts.
docs: env
	$(BIN)/python hack/generate.py
