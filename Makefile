# The front door: `make run` and `make test` set everything up themselves (as root, Debian 12).
SHELL := /bin/bash
VENV := .venv/bin
GREETING := import platform; print(f"Hello from a Tartarus sandbox: Python {platform.python_version()} on {platform.node()}")

.PHONY: setup run test lint template clean bench

setup:
	@scripts/setup.sh

template: setup
	@$(VENV)/tartarus template build python

run: template
	$(VENV)/tartarus run --template python -- python3 -c '$(GREETING)'

test: template
	$(VENV)/pytest $(PYTEST_ARGS)

# `make bench` (full, a few minutes) or `make bench QUICK=1` (under 2 minutes): writes
# bench/results/latest.{json,md,png}, every figure beside a floor measured in the same run.
bench: template
	@$(VENV)/tartarus template build python-ds
	$(VENV)/tartarus bench $(if $(filter 1 yes true,$(QUICK)),--quick)

lint: setup
	$(VENV)/ruff check src tests bench
	$(VENV)/ruff format --check src tests bench
	$(VENV)/mypy

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache
