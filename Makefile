# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
BASE   := $(VENV)/.installed-base

.PHONY: demo test test-fast install bench clean engines

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies change (torch is pinned in pyproject.toml).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev,embeddings,deploy]"
	touch $(STAMP) $(BASE)

# The demo needs only the base package (no torch, Feast or test tools).
$(BASE): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

install: $(STAMP)

# The demo runs on Prism when it can be built (Go, the Go module proxy), else on Beam's Python engine.
demo: $(BASE)
	@bash engines/fetch.sh prism || echo "demo: no Prism (above); replaying on Beam's Python streaming engine"
	$(PY) -m pipelines.demo

# Real Beam engines for tests/test_engines.py: Prism, a Flink 1.19 job server and a Flink
# distribution, pinned and cached (engines/README.md); a second run only checks checksums.
engines:
	bash engines/fetch.sh prism flink flink-dist

test: $(STAMP) engines
	$(PY) -m pytest -q

# The inner loop: no tests marked slow (over ~5 s) or flink; `make test` still runs everything.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m 'not slow and not flink'

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo_output .pytest_cache
