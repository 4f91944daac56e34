# The two commands of normlab: `make demo` and `make test`. Both create .venv and install normlab with the
# pinned versions of constraints.txt first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := lab,kernels,export,dev,cluster

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/normlab claims --quick --out claims-report

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/normlab bench
	$(BIN)/normlab bench --models

clean:
	rm -rf $(VENV) build dist src/*.egg-info
