# tripletbench: `make test` and `make ablation` are the two commands a new user runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

PRESET ?=
EXPERIMENT ?=
DATA_DIR ?= datasets
RESULTS ?= results
# make ablation: empty means RESULTS/<experiment>/report/ (the run's own report); make report and make bench: reports/
REPORTS ?=
BACKEND ?= auto
# make ablation: more flags for python -m bench.grid, e.g. --allow-emulated-bf16 (a bf16 preset on a CPU without native bf16)
# or --allow-mixed-cpus (the rest of an experiment on another kind of CPU than its records')
GRID_ARGS ?=
# make bench: comma-separated plugin files whose losses join the loss benchmark (a preset names its own)
PLUGINS ?=
# free space a new .venv needs, in GiB (measured: 6.3 GiB with torch 2.14.1 and its CUDA wheels)
INSTALL_GIB ?= 7

.PHONY: install test ablation report tex-check bench gpu-check lint docs clean-venv

# (Re)install when .venv is missing or pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python >= 3.10" >&2; exit 1; }
	@free=$$(df -Pk . 2>/dev/null | awk 'NR == 2 {print int($$4 / 1048576)}'); [ -x $(PY) ] || [ -z "$$free" ] || [ "$$free" -ge $(INSTALL_GIB) ] || { echo "error: less than $(INSTALL_GIB) GiB free on this disk; a new $(VENV) (torch with its CUDA wheels) takes about 6.3 GiB" >&2; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed; install the venv module (Debian: apt-get install python3-venv)" >&2; exit 1; }
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# two pytest-xdist workers (the 2-core target); the modules that start Ray share one (tests/conftest.py)
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

ablation: $(STAMP)
	$(PY) -m bench.grid --preset "$(PRESET)" --experiment "$(EXPERIMENT)" --data-dir "$(DATA_DIR)" --results "$(RESULTS)" --backend "$(BACKEND)" --reports "$(REPORTS)" $(GRID_ARGS)

# the committed report: the reference experiments only (a citable preset's run under its own name, e.g. results/cpu)
report: $(STAMP)
	$(PY) -m bench.report --results "$(RESULTS)" --reports "$(or $(REPORTS),reports)" --reference

# every LaTeX fragment compiled alone in the article it is sized for; fails on an overfull box (needs pdflatex)
tex-check: $(STAMP)
	$(PY) -m bench.report --check-tex --reports "$(or $(REPORTS),reports)"

# the loss benchmark, then the full training step of the preset's cells in isolation (bench/step_benchmark.py)
bench: $(STAMP)
	@$(PY) -c "import sentence_transformers" 2>/dev/null || $(PY) -m pip install --quiet -e '.[dev,peers]' || echo "note: the peers extra (sentence-transformers) did not install; the loss benchmark runs without it" >&2
	$(PY) -m bench.loss_benchmark --out "$(or $(REPORTS),reports)" --plugins "$(PLUGINS)"
	$(PY) -m bench.step_benchmark --preset "$(PRESET)" --data-dir "$(DATA_DIR)" --out "$(or $(REPORTS),reports)"

# everything a CUDA GPU should measure, into one folder (bench/gpu_check.py); exits 2 without a GPU. No install
# step, so that it runs offline: the venv's Python when there is one, else $(PYTHON) (e.g. a stock PyTorch image).
GPU_CHECK ?= gpu-check
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m bench.gpu_check --data-dir "$(DATA_DIR)" --out "$(GPU_CHECK)"

# docs/config.md from the config table (bench/engine/config.py KEYS); tests/test_config.py checks it is current
docs: $(STAMP)
	$(PY) -c "from bench.reporting.reference import config_markdown; open('docs/config.md', 'w').write(config_markdown())"

clean-venv:
	rm -rf $(VENV)
