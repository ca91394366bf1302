# mv2d-xray: `make install`, then `make test` (or `make demo`).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BENCHMARK_DOMAINS ?= chest blades
BENCHMARK_ARGS ?=

.PHONY: install test demo demo-blades benchmark

install:  ## create or reuse .venv and install the stack (idempotent)
	VENV=$(VENV) bash tools/install/install.sh

test: install  ## run the test suite
	$(PYTHON) -m pytest tests

demo: install  ## offline demo: demo dataset -> training -> test -> picture (work_dirs/demo)
	PYTHON=$(PYTHON) bash tools/demo.sh

demo-blades: install  ## the same on generated cast blades with defects (work_dirs/demo_blades)
	DEMO=blades PYTHON=$(PYTHON) bash tools/demo.sh

benchmark: install  ## held-out benchmark: MV2D vs triangulation on the test split (work_dirs/benchmark); BENCHMARK_DOMAINS=chest for one, BENCHMARK_ARGS for more options
	$(PYTHON) tools/benchmark_detection.py --domains $(BENCHMARK_DOMAINS) $(BENCHMARK_ARGS)
