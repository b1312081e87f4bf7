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

.PHONY: install data prepare pretrain finetune test test-slow test-all bench bench-decode clean

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

# The embedded default's tiny backbones, randomly initialised once and saved, then loaded by path like real ones.
EMBEDDED := artifacts/embedded
PRETRAIN_CKPT := runs/embedded/pretrain/checkpoints/last.ckpt
FINETUNE_CKPT := runs/embedded/finetune/checkpoints/last.ckpt

prepare: $(EMBEDDED)/llm/config.json

$(EMBEDDED)/llm/config.json: $(DATA)/meta.json
	$(PY) -m vrp prepare --tokenizer $(DATA)/tokenizer --out $(EMBEDDED)

# Stage 1. `make pretrain` always trains; `make finetune` runs it only when its checkpoint is missing.
pretrain: $(EMBEDDED)/llm/config.json
	$(PY) -m vrp fit --config experiments/embedded/pretrain.yaml $(ARGS)

$(PRETRAIN_CKPT):
	$(MAKE) pretrain

# Stage 2, then the per-question-type accuracy table on the test split.
finetune: $(EMBEDDED)/llm/config.json $(PRETRAIN_CKPT)
	$(PY) -m vrp fit --config experiments/embedded/finetune.yaml $(ARGS)
	$(PY) -m vrp test --config experiments/embedded/finetune.yaml --ckpt_path $(FINETUNE_CKPT) $(ARGS)

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
