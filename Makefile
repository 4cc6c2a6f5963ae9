# The front door: `make run` and `make test` set everything up themselves (as root, Debian 12).
SHELL := /bin/bash
VENV := .venv/bin
GREETING := import platform; print(f"Hello from a Tartarus sandbox: Python {platform.python_version()} on {platform.node()}")

.PHONY: setup run test lint template clean

setup:
	@scripts/setup.sh

template: setup
	@$(VENV)/tartarus template build python

run: template
	$(VENV)/tartarus run --template python -- python3 -c '$(GREETING)'

test: template
	$(VENV)/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/ruff check src tests bench
	$(VENV)/ruff format --check src tests bench
	$(VENV)/mypy

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache
