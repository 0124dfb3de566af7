# EVA for ROS 2. `make setup` once (idempotent), then `make test` or `make demo`.
# Everything runs inside the workspace environment (scripts/env.sh): the venv, the colcon
# install space, and DDS discovery confined to this machine.
SHELL := /bin/bash
.SHELLFLAGS := -e -o pipefail -c
.DEFAULT_GOAL := help
ENV := source scripts/env.sh &&
PYTEST_ARGS ?=

.PHONY: help setup build test lint demo bench-transport bench-idm bench-loop bench-planner shell run constraints clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup:  ## create .venv (ROS 2 Jazzy wheels + pinned deps) and colcon-build the workspace
	scripts/setup_workspace.sh

build: setup  ## same as setup: rebuild after editing packages

test: setup  ## run the whole test suite and lint (what CI runs)
	$(ENV) scripts/run_tests.sh $(PYTEST_ARGS)

lint: setup  ## ruff (pyflakes, pycodestyle, pep257 docstrings, imports)
	$(ENV) ruff check .

demo: setup  ## the closed loop on the simulated robot with tiny models (first run trains a small IDM, ~5 min)
	$(ENV) python scripts/demo.py

bench-transport: setup  ## DDS latency/throughput of images and plans -> benchmarks/results/
	$(ENV) python benchmarks/transport.py

bench-idm: setup  ## synthesise 350 episodes, train the IDM for 30 min on CPU, evaluate -> benchmarks/results/
	$(ENV) python benchmarks/idm.py

bench-loop: setup  ## closed-loop latency per stage, ROS overhead ratio, e-stop reaction -> benchmarks/results/
	$(ENV) python benchmarks/loop.py

bench-planner: setup  ## planner_node's overhead beside WorldModel.generate (tiny model, CPU) -> benchmarks/results/
	$(ENV) python benchmarks/planner.py

shell: setup  ## an interactive shell inside the workspace environment
	$(ENV) exec bash -i

run: setup  ## run a command in the environment: make run CMD="eva --help"
	$(ENV) $(CMD)

constraints:  ## re-pin requirements/constraints.txt from the current .venv
	$(ENV) python scripts/freeze_constraints.py > requirements/constraints.txt

clean:  ## remove build outputs (keeps .venv)
	rm -rf build install log demo_out
