# Two commands do all the set-up on a fresh machine:
#   make quickstart   — create .venv, install rankloop, run the whole RLHF loop on the embedded default
#   make test         — create .venv, install rankloop with its test tools, run the whole suite
#
# torch is installed first, on its own, so pip never pulls a multi-GB CUDA build as a dependency.
# GPU users: install your own torch build into .venv first (or set TORCH_SPEC / TORCH_INDEX).

VENV        ?= .venv
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: install test quickstart bench clean gpu-wheels

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

quickstart: install
	$(VENV)/bin/rankloop quickstart

# The PPO benchmark runs both sides in its own venv with TRL 1.12, the last release with PPOTrainer.
bench/.venv-trl/.installed:
	test -x bench/.venv-trl/bin/python || $(PYTHON) -m venv bench/.venv-trl
	bench/.venv-trl/bin/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	bench/.venv-trl/bin/pip install -q 'trl==1.12.*' vaderSentiment psutil
	bench/.venv-trl/bin/pip install -q -e .
	touch $@

bench: install bench/.venv-trl/.installed
	$(PIP) install -q -e '.[test,bench-reward]'
	$(PY) bench/reward_vs_trl.py --quick
	$(PY) bench/ppo_vs_trl.py --quick
	$(PY) bench/labeling_load.py
	$(PY) bench/quickstart.py

# ---- the GPU check (bench/gpu_check.sh): the wheels it installs on a GPU machine that lacks them
# (pinned in bench/gpu_wheels.txt; compiled ones for CPython 3.10-3.13 on x86-64 Linux; ~16 MiB, git-ignored).
gpu-wheels: install
	mkdir -p bench/gpu_wheels
	grep -v '^#' bench/gpu_wheels.txt | $(PIP) download -q --no-deps --only-binary=:all: -d bench/gpu_wheels -r /dev/stdin
	for v in 3.10 3.11 3.12 3.13; do \
	  $(PIP) download -q --no-deps --only-binary=:all: --python-version $$v --platform manylinux2014_x86_64 \
	    --platform manylinux_2_17_x86_64 -d bench/gpu_wheels pydantic_core==2.50.5 xxhash==4.1.0 multiprocess==0.70.19; \
	done

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
