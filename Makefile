# Fresh machine: `make demo` or `make test`; both install what they need first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/installed
# The CPU build of torch, installed before lbnl so that lbnl's torch range installs nothing more
# (a plain `torch` would pull a multi-GB CUDA build on a machine without one).
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast test-clients bench clean

$(STAMP): pyproject.toml Makefile
	$(PIP) install --quiet --disable-pip-version-check '$(TORCH)'
	$(PIP) install --quiet --disable-pip-version-check -e '.[all]'
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m lbnl.cli.demo

# Everything: unit, parity and end-to-end tests (slow ones are deselected by plain `pytest`).
test: $(STAMP)
	$(PYTHON) -m pytest tests -m ""

# The unit tests only (tests/unit).
test-fast: $(STAMP)
	$(PYTHON) -m pytest tests/unit -m "not slow and not parity"

# The real third-party rerank clients (the clients extra) against lbnl serve on loopback (docs/serve.md).
test-clients: $(STAMP)
	$(PYTHON) -m pytest tests -m clients

clean:
	rm -rf .make cache build src/*.egg-info
