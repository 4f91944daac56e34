# The two commands of normlab: `make demo` and `make test`. Both create .venv and install normlab with the
# pinned versions of constraints.txt first. `make test` lints (ruff, mypy: `make lint`) before the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := lab,kernels,export,dev,cluster

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/normlab claims --quick --out claims-report

# Rules and strictness: [tool.ruff] and [tool.mypy] in pyproject.toml (mypy's files = the whole package).
# Both always run, so one pass shows every finding; either failing fails.
lint: $(STAMP)
	$(BIN)/ruff check src tests; ruff=$$?; $(BIN)/mypy && exit $$ruff

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/normlab bench
	$(BIN)/normlab bench --models

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache
