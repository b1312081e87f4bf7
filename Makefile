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

.PHONY: install data prepare tracks cache pretrain finetune evidence ablate baselines zeroshot report lint test test-slow test-all bench \
	bench-decode lmms-env test-lmms clean

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
	$(PY) -m lab data --out $(DATA) --videos $(VIDEOS) --seed $(SEED)

# The embedded default's tiny backbones, randomly initialised once and saved, then loaded by path like real ones.
EMBEDDED := artifacts/embedded
PRETRAIN_CKPT := runs/embedded/pretrain/checkpoints/last.ckpt
FINETUNE_CKPT := runs/embedded/finetune/checkpoints/last.ckpt
EXPORTED := artifacts/embedded/finetune

# Stage 0 then pretrains the ViT on train frames (VIT_STEPS=0 keeps it random) and, with LLM_STEPS > 0, the LLM on
# knowledge documents of LLM_SCENES scenes of its own seed stream, never a benchmark clip (LLM_CORPUS=knowledge), or
# on their control, the same sentences shuffled across scenes (LLM_CORPUS=control); the default 0 keeps it random.
# It trains the object stage's detector on train frames with their boxes as labels (DETECTOR_STEPS); each runs once
# (a different value on existing artifacts is refused: remove artifacts/embedded first).
VIT_STEPS ?= 600
LLM_STEPS ?= 0
LLM_CORPUS ?= knowledge
LLM_SCENES ?= 4000
DETECTOR_STEPS ?= 800
prepare: $(EMBEDDED)/vit/stage0.json

$(EMBEDDED)/vit/stage0.json: $(DATA)/meta.json
	$(PY) -m lab prepare --tokenizer $(DATA)/tokenizer --out $(EMBEDDED) --data $(DATA) --vit-steps $(VIT_STEPS) \
		--llm-steps $(LLM_STEPS) --llm-corpus $(LLM_CORPUS) --llm-scenes $(LLM_SCENES) --detector-steps $(DETECTOR_STEPS)

# The object stage (stage-0 detector + tracker) over every video of every split, once: the tracks the embedded
# configs read (`tracks: artifacts/tracks/embedded`); the simulator's boxes are no input from here on.
TRACKS := artifacts/tracks/embedded
tracks: $(TRACKS)/meta.json

$(TRACKS)/meta.json: $(EMBEDDED)/vit/stage0.json
	$(PY) -m vrp track --config experiments/embedded/finetune.yaml --out $(TRACKS)

$(EMBEDDED)/llm/config.json: $(EMBEDDED)/vit/stage0.json

# The frozen ViT's tokens of every train/val/test video, once (the embedded configs read them instead of decoding).
CACHE := artifacts/cache/embedded
cache: $(CACHE)/meta.json

$(CACHE)/meta.json: $(EMBEDDED)/vit/stage0.json
	$(PY) -m vrp cache --config experiments/embedded/finetune.yaml --out $(CACHE)

# Stage 1. `make pretrain` always trains; `make finetune` runs it only when its checkpoint is missing.
pretrain: $(CACHE)/meta.json $(TRACKS)/meta.json
	$(PY) -m vrp fit --config experiments/embedded/pretrain.yaml $(ARGS)

$(PRETRAIN_CKPT):
	$(MAKE) pretrain

# Stage 2, then the per-question-type accuracy table on the test split.
finetune: $(CACHE)/meta.json $(TRACKS)/meta.json $(PRETRAIN_CKPT)
	$(PY) -m vrp fit --config experiments/embedded/finetune.yaml $(ARGS)
	$(PY) -m vrp test --config experiments/embedded/finetune.yaml --ckpt_path $(FINETUNE_CKPT) --trainer.logger=false $(ARGS)
	$(PY) -m vrp export --ckpt $(FINETUNE_CKPT) --out $(EXPORTED)

$(FINETUNE_CKPT):
	$(MAKE) finetune

# Generalisation check: scenes from a seed training never saw (random unless FRESH_SEED is given), tracked by the
# object stage and scored by the fine-tuned model, printed per type beside the test split, with 95% intervals and
# chance; the object stage's precision / recall / id switches on the test split and the new scenes are printed first
# (the simulator's boxes are read there to score the tracks, never as the model's input).
ifeq ($(filter evidence,$(MAKECMDGOALS)),evidence)  # drawn once, and only for `make evidence`
ifndef FRESH_SEED
FRESH_SEED := $(shell $(PYTHON) -c "import random; print(random.randrange(1000, 1000000))")
endif
endif
FRESH_VIDEOS ?= 300
FRESH := data/fresh-$(FRESH_SEED)
evidence: $(FINETUNE_CKPT)
	$(PY) -m lab data --out $(FRESH) --videos $(FRESH_VIDEOS) --seed $(FRESH_SEED)
	$(PY) -m vrp track --config experiments/embedded/finetune.yaml --splits test --score-against $(DATA) \
	  --out runs/evidence/tracks-test
	$(PY) -m vrp track --config experiments/embedded/finetune.yaml --data.init_args.root=$(FRESH) \
	  --splits train --score-against $(FRESH) --out $(FRESH)/tracks
	$(PY) -m vrp test --config experiments/embedded/finetune.yaml --ckpt_path $(FINETUNE_CKPT) --trainer.logger=false \
	  --data.init_args.feature_cache=null --data.init_args.test.class_path=data_modules.sources.MultipleChoice \
	  --data.init_args.test.init_args.path=$(FRESH)/train/mc.csv --data.init_args.test.init_args.target=text \
	  --data.init_args.test.init_args.template="<video>"$$'\n'"{question}" \
	  --data.init_args.test.init_args.boxes=$(FRESH)/tracks/train.json \
	  --results.dir=runs/evidence/fresh-$(FRESH_SEED) --results.blind_baseline=null $(ARGS)
	$(PY) -m lab evidence --results test=runs/embedded/finetune --results fresh-$(FRESH_SEED)=runs/evidence/fresh-$(FRESH_SEED)

# Ablation matrix (experiments/ablations, each row stage 1 + stage 2) and baselines (experiments/baselines,
# stage 2 only) on the embedded default; each writes results.md / results.csv under its runs/ folder.
# Narrow them with e.g. ARGS="--only baseline,fusion_mlp --steps 500"; ARGS="--jobs 2" runs two rows at once.
# The backbone rows need their own backbones, built once: a random ViT with its feature cache (vfm_random), an LLM
# pretrained on knowledge documents (llm_pretrained, ABLATE_LLM_STEPS of stage 0 on LLM_SCENES scenes) and its
# control, pretrained for the same steps on the same sentences shuffled across scenes (llm_control).
ABLATE_ART := artifacts/ablate
ABLATE_LLM_STEPS ?= 600
ablate: $(CACHE)/meta.json $(TRACKS)/meta.json artifacts/cache/ablate-random-vit/meta.json \
		$(ABLATE_ART)/text-llm/llm/stage0.json $(ABLATE_ART)/control-llm/llm/stage0.json
	$(PY) -m lab ablate --out runs/ablate $(ARGS)

$(ABLATE_ART)/random/vit/stage0.json: $(DATA)/meta.json
	$(PY) -m lab prepare --tokenizer $(DATA)/tokenizer --out $(ABLATE_ART)/random --data $(DATA) --vit-steps 0 --llm-steps 0

artifacts/cache/ablate-random-vit/meta.json: $(ABLATE_ART)/random/vit/stage0.json
	$(PY) -m vrp cache --config experiments/embedded/finetune.yaml --config experiments/ablations/vfm_random.yaml \
		--out artifacts/cache/ablate-random-vit

$(ABLATE_ART)/text-llm/llm/stage0.json: $(DATA)/meta.json
	$(PY) -m lab prepare --tokenizer $(DATA)/tokenizer --out $(ABLATE_ART)/text-llm --data $(DATA) --vit-steps 0 \
		--llm-steps $(ABLATE_LLM_STEPS) --llm-corpus knowledge --llm-scenes $(LLM_SCENES)

$(ABLATE_ART)/control-llm/llm/stage0.json: $(DATA)/meta.json
	$(PY) -m lab prepare --tokenizer $(DATA)/tokenizer --out $(ABLATE_ART)/control-llm --data $(DATA) --vit-steps 0 \
		--llm-steps $(ABLATE_LLM_STEPS) --llm-corpus control --llm-scenes $(LLM_SCENES)

baselines: $(CACHE)/meta.json $(TRACKS)/meta.json
	$(PY) -m lab ablate --overlays experiments/baselines --no-baseline-row --stage2-reference model --steps 1500 --out runs/baselines $(ARGS)

RESULT_DIRS = $(patsubst %/test_results.json,%,$(wildcard runs/baselines/*/test_results.json runs/zeroshot/*/test_results.json runs/ablate/*/test_results.json))
EXTRA_RESULTS = $(foreach d,$(RESULT_DIRS),--results $(notdir $(d))=$(d))
# Zero-shot transfer: stage 2 with question types held out (experiments/zeroshot), tested on all types.
zeroshot: $(PRETRAIN_CKPT)
	$(PY) -m lab ablate --overlays experiments/zeroshot --no-baseline-row --steps 1500 --out runs/zeroshot $(ARGS)

# A Markdown page with plots: curves of both stages, per-type accuracy of the model, baselines and ablations
# (whichever have run), and attention heatmaps for a few test clips.
report: $(FINETUNE_CKPT)
	$(PY) -m vrp.evaluation.report --results model=runs/embedded/finetune $(EXTRA_RESULTS) \
	  --curves stage1=runs/embedded/pretrain --curves stage2=runs/embedded/finetune \
	  --checkpoint $(EXPORTED) --out artifacts/report

# ruff lint + format check (configured in pyproject.toml); `.venv/bin/ruff format` applies the format
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(INSTALLED)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-slow: $(INSTALLED)
	$(PY) -m pytest -m slow -q $(ARGS)

test-all: $(INSTALLED)
	$(PY) -m pytest -q $(ARGS)

# lmms-eval 0.7.3 pins av<16 while the core install runs av 18, so it gets a venv of its own: vrp + the `lmms`
# extra, which resolves to av 15. `make test-lmms` runs the video reader's and the real layouts' tests and the
# lmms-eval round trip there (lmms-eval scores the synthetic test questions as `vrp test` does).
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
LMMS_INSTALLED := $(LMMS_VENV)/.installed

lmms-env: $(LMMS_INSTALLED)

$(LMMS_INSTALLED): pyproject.toml
	test -x $(LMMS_PY) || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install --quiet --upgrade pip
	$(LMMS_PY) -m pip install --quiet -e ".[dev,lmms]"
	touch $@

test-lmms: $(LMMS_INSTALLED)
	$(LMMS_PY) -m pytest -q -p no:cacheprovider tests/data_modules/test_video.py tests/data_modules/test_real_layouts.py \
	  tests/evaluation/test_lmms.py $(ARGS)

bench-decode: $(BENCH_INSTALLED)
	$(PY) benchmarks/bench_decode.py $(ARGS)

bench: $(BENCH_INSTALLED) $(EMBEDDED)/llm/config.json
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs lightning_logs artifacts .pytest_cache
