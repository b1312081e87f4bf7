# vrp — every target installs what it needs first; re-running a target whose inputs did not change is a no-op.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BENCH_INSTALLED := $(VENV)/.bench-installed
DATA := data/synthetic
VIDEOS ?= 2000
SEED ?= 0
ARGS ?=

.PHONY: install data test test-slow test-all bench bench-decode clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# torchcodec needs FFmpeg's shared libraries (Debian 12 names); without them its benchmark row is skipped, with the reason.
FFMPEG_LIBS := libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4
$(BENCH_INSTALLED): $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	-command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -qq --no-install-recommends $(FFMPEG_LIBS) >/dev/null
	touch $@

data: $(DATA)/meta.json

$(DATA)/meta.json: $(INSTALLED)
	$(PY) -m data_modules.synthetic --out $(DATA) --videos $(VIDEOS) --seed $(SEED)

test: $(INSTALLED)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-slow: $(INSTALLED)
	$(PY) -m pytest -m slow -q $(ARGS)

test-all: $(INSTALLED)
	$(PY) -m pytest -q $(ARGS)

bench-decode: $(BENCH_INSTALLED)
	$(PY) benchmarks/bench_decode.py $(ARGS)

bench: $(BENCH_INSTALLED)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs lightning_logs artifacts .pytest_cache
