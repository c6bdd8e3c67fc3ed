# The two commands of the README:
#   make up     bring up the local simulated cluster and serve the tiny model (embedded default)
#   make test   every gate: lint, sanity, unit tests, end-to-end tests on the simulated cluster
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bootstrap up test test-fast lint sanity unit e2e clean

bootstrap:
	./scripts/bootstrap

up: bootstrap
	$(BIN)/multinode-vllm up

test: bootstrap
	./scripts/test all

test-fast: bootstrap
	./scripts/test fast

lint: bootstrap
	./scripts/test lint

sanity: bootstrap
	./scripts/test sanity

unit: bootstrap
	./scripts/test unit

e2e: bootstrap
	./scripts/test e2e
