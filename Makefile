# `make serve` and `make test` work on a fresh clone: both create .venv when it is missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
LOCAL_STAMP := $(VENV)/.installed-local

.PHONY: install install-local serve test lint typecheck pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,s3]'
	touch $(STAMP)

# The local-model engine (diffusers). torch is pinned first so pip takes the CPU build on this
# machine's disk; on a GPU machine install the CUDA build of torch first (see docs/engines/diffusers.md).
install-local: $(LOCAL_STAMP)

$(LOCAL_STAMP): $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,s3,local]'
	touch $(LOCAL_STAMP)

serve: install
	$(BIN)/imagegate serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Regenerate the README's settings table from the Settings model.
readme-settings: install
	$(BIN)/python -c "import re,pathlib; from imagegate.settings_doc import settings_table as t; p=pathlib.Path('README.md'); p.write_text(re.sub(r'<!-- settings:start -->.*<!-- settings:end -->', lambda m: '<!-- settings:start -->\n'+t()+'<!-- settings:end -->', p.read_text(), flags=re.S))"
