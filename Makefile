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

.PHONY: install test quickstart bench clean

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

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
