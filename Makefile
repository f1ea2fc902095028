# The two commands a new user needs:
#   make run    set up, then run the whole loop on the embedded default (examples/mnist)
#   make test   set up, bootstrap the real test components, then lint, type-check and test
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DATASET := examples/mnist/data/mnist.npz

.PHONY: run test env components lint pytest crd

run: env $(DATASET)
	$(BIN)/mlcd run examples/mnist/modelpipeline.yaml

test: env components lint pytest

env:
	@hack/setup-env

components:
	@hack/bootstrap

$(DATASET): | env
	$(BIN)/mnist-dataset $(DATASET)

lint: env
	$(BIN)/ruff check operator tests examples benchmarks
	$(BIN)/ruff format --check operator tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: env
	$(BIN)/pytest $(PYTEST_ARGS)

# The CRD is generated from the models; a test fails when the checked-in file drifts.
crd: env
	$(BIN)/python -m mlcd.k8s.crd --output crds/mlcd.io_modelpipelines.yaml
