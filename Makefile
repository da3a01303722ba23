# Fresh machine: `make demo` or `make test`; both install what they need first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .make/installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PIP) install --quiet --disable-pip-version-check -e '.[all]'
	@mkdir -p .make && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m lbnl.cli.demo

test: $(STAMP)
	$(PYTHON) -m pytest tests

clean:
	rm -rf .make cache build src/*.egg-info
