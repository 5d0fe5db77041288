# llm-parity: `make help` lists the targets. Every target calls the invoke tasks in tasks.py.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
INV := $(VENV)/bin/inv
STAMP := $(VENV)/.llm-parity-installed
DTYPE ?=
RUN ?= demo
REPORT_LANG ?= zh

.DEFAULT_GOAL := help
.PHONY: help setup demo test clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements/*.txt pyproject.toml scripts/install.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	scripts/install.sh dev $(VENV)/bin/python
	touch $@

setup: $(STAMP) ## create .venv and install the pinned CPU target, reference and test tools

demo: $(STAMP) ## end to end on the tiny model: vLLM on this CPU vs transformers (DTYPE=bfloat16 to try bf16)
	$(INV) demo $(if $(DTYPE),--dtype $(DTYPE)) --run $(RUN) --lang $(REPORT_LANG)

test: $(STAMP) ## run the tests (starts one real vLLM server)
	$(INV) test

clean: ## remove results/ (keeps .venv and the tiny-model cache)
	rm -rf results
