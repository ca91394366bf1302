# mv2d-xray: `make install`, then `make test` (or `make demo`).
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: install test demo

install:  ## create or reuse .venv and install the stack (idempotent)
	VENV=$(VENV) bash tools/install/install.sh

test: install  ## run the test suite
	$(PYTHON) -m pytest tests

demo: install  ## offline demo: demo dataset -> training -> test -> picture (work_dirs/demo)
	PYTHON=$(PYTHON) bash tools/demo.sh
