# LatentSR: `make demo` and `make test` set everything up on a bare Debian 12 (run as root, or with sudo).
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
PLUGINS := $(ROOT)/build/plugins
SITE := $(VENV)/lib/python3.11/site-packages
APT_PACKAGES := qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv xvfb
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
QGIS_ENV := QT_QPA_PLATFORM=offscreen QGIS_PLUGINPATH=$(PLUGINS) PYTHONPATH=$(SITE)
SAMPLE := resources/sample/naip_2020_crop.tif
DEMO_OUT := $(ROOT)/build/demo/naip_2020_crop_x2.5.tif

.PHONY: setup system venv plugin env demo test train bench package screenshots deploy

setup: system venv plugin

system:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES); }

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

plugin: system venv
	mkdir -p $(PLUGINS)
	ln -sfn $(ROOT) $(PLUGINS)/latentsr
	@$(QGIS_ENV) /usr/bin/qgis_process.bin plugins enable latentsr >/dev/null 2>&1 || true
	@$(QGIS_ENV) /usr/bin/qgis_process.bin plugins 2>/dev/null | grep -q '^\* latentsr' \
	  || { echo "error: qgis_process could not enable the latentsr plugin" >&2; exit 1; }

env:
	@echo "export QT_QPA_PLATFORM=offscreen"
	@echo "export QGIS_PLUGINPATH=$(PLUGINS)"
	@echo "export PYTHONPATH=$(SITE)"

demo: setup
	mkdir -p $(dir $(DEMO_OUT))
	$(QGIS_ENV) /usr/bin/qgis_process.bin run latentsr:superresolve -- \
	  INPUT=$(ROOT)/$(SAMPLE) SCALE=2.5 METHOD=0 OUTPUT=$(DEMO_OUT) >$(DEMO_OUT).log 2>&1 \
	  || { tail -5 $(DEMO_OUT).log >&2; exit 1; }
	@for f in $(ROOT)/$(SAMPLE) $(DEMO_OUT); do echo "$$f"; gdalinfo $$f 2>/dev/null \
	  | grep -E '^(Size|Pixel Size|Upper Left|Lower Right)|^    ID\["EPSG"' | sed 's/^ */  /'; done
	@echo "$(DEMO_OUT)"

test: setup
	cd $(ROOT) && $(QGIS_ENV) $(PY) -m pytest -q tests

# Training: resumable (run it again after an interruption). On a GPU: make train TRAIN_ARGS="--device cuda --batch 64 --workers 8"
TRAIN_DATA ?= $(ROOT)/../shared/data/ucmerced/train
VAL_DATA ?= $(ROOT)/../shared/data/ucmerced/val
RUNS ?= $(ROOT)/runs
# The recipe (steps, learning rates, loss weights, the spread and features of stage 2, the last stage
# `add`: LCMSR's decoder trained on its decoded one-step samples, then `add-e2diffsr`: E²DiffSR trained
# through that decoder) is the table
# in training/recipe.py, the defaults of `python -m training`: the recipe that trained the committed
# bundle. Stage 1 starts from the committed bundle: its stage-1 encoder and decoder (a bundle without
# an encoder: its decoder's LR branch, with the encoder and detail path as a PCA of the residual).
# STAGE1_STEPS, STAGE2_STEPS (empty: the recipe's) and STAGE1_ARGS, STAGE2_ARGS, ADD_ARGS, ADD_E2DIFFSR_ARGS
# override the recipe.
STAGE1_STEPS ?=
STAGE2_STEPS ?=
STAGE1_ARGS ?= --init $(ROOT)/resources/models/latentsr-rgb
STAGE2_ARGS ?=
ADD_ARGS ?=
ADD_E2DIFFSR_ARGS ?=
TRAIN_ARGS ?=

train: venv
	cd $(ROOT) && $(PY) -m training stage1 --data $(TRAIN_DATA) --val $(VAL_DATA) --out $(RUNS)/stage1 \
	  $(if $(STAGE1_STEPS),--steps $(STAGE1_STEPS)) --resume $(STAGE1_ARGS) $(TRAIN_ARGS)
	cd $(ROOT) && $(PY) -m training e2diffsr --stage1 $(RUNS)/stage1 --data $(TRAIN_DATA) --val $(VAL_DATA) \
	  --out $(RUNS)/e2diffsr $(if $(STAGE2_STEPS),--steps $(STAGE2_STEPS)) --resume $(STAGE2_ARGS) $(TRAIN_ARGS)
	cd $(ROOT) && $(PY) -m training lcmsr --stage1 $(RUNS)/stage1 --data $(TRAIN_DATA) --val $(VAL_DATA) \
	  --out $(RUNS)/lcmsr $(if $(STAGE2_STEPS),--steps $(STAGE2_STEPS)) --resume $(STAGE2_ARGS) $(TRAIN_ARGS)
	cd $(ROOT) && $(PY) -m training add --stage1 $(RUNS)/stage1 --init $(RUNS)/lcmsr --data $(TRAIN_DATA) --val $(VAL_DATA) \
	  --out $(RUNS)/add --resume $(ADD_ARGS) $(TRAIN_ARGS)
	cd $(ROOT) && $(PY) -m training add-e2diffsr --stage1 $(RUNS)/stage1 --init $(RUNS)/e2diffsr --decoder $(RUNS)/add \
	  --data $(TRAIN_DATA) --val $(VAL_DATA) --out $(RUNS)/add-e2diffsr --resume $(ADD_E2DIFFSR_ARGS) $(TRAIN_ARGS)
	cd $(ROOT) && $(PY) -m training bundle --stage1 $(RUNS)/stage1 --e2diffsr $(RUNS)/e2diffsr --lcmsr $(RUNS)/lcmsr \
	  --add $(RUNS)/add --add-e2diffsr $(RUNS)/add-e2diffsr
	cd $(ROOT) && $(PY) -m training reach --rasters $(VAL_DATA)
	cd $(ROOT) && $(PY) -m training export-onnx

# The quality bench runs on BENCH_LIMIT val images spread over all classes (0: all 210); the peers of
# docs/pd.png and the RealSR column of docs/zoom.png need the optional requirements-bench.txt (skipped,
# and said so, without them).
BENCH_LIMIT ?= 42
bench: setup
	cd $(ROOT) && $(PY) -m training.bench quality --val $(VAL_DATA) --limit $(BENCH_LIMIT) --set-default --out docs/BENCHMARKS.md
	cd $(ROOT) && $(PY) -m training.bench backends --model latentsr-rgb --out docs/BENCHMARKS.md
	cd $(ROOT) && $(PY) -m training.bench backends --model latentsr-rgb --threads 1 --out docs/BENCHMARKS.md
	cd $(ROOT) && $(PY) -m training.bench precision --val $(VAL_DATA) --limit $(BENCH_LIMIT) --out docs/BENCHMARKS.md
	cd $(ROOT) && $(PY) -m training.bench scale --out docs/BENCHMARKS.md
	cd $(ROOT) && $(PY) -m training.bench cluster --out docs/BENCHMARKS.md
	cd $(ROOT) && $(PY) -m training.bench zoom --val $(VAL_DATA) --out docs/BENCHMARKS.md

# Plugin zip for QGIS's "Install from ZIP": latentsr/ with metadata, LICENSE, code and resources.
package:
	/usr/bin/python3 $(ROOT)/scripts/package.py --output $(ROOT)/latentsr.zip

# docs/dock.png from a real QGIS under Xvfb (a throwaway profile; the log is build/screenshots/qgis.log).
SHOTS := $(ROOT)/build/screenshots
screenshots: setup
	rm -rf $(SHOTS) && mkdir -p $(SHOTS)/profile
	LATENTSR_ROOT=$(ROOT) LATENTSR_SCREENSHOT=$(ROOT)/docs/dock.png QGIS_CUSTOM_CONFIG_PATH=$(SHOTS)/profile \
	  QGIS_PLUGINPATH=$(PLUGINS) PYTHONPATH=$(SITE) xvfb-run -a -s "-screen 0 1440x900x24" \
	  qgis --nologo --noversioncheck --code $(ROOT)/scripts/screenshot.py >$(SHOTS)/qgis.log 2>&1 \
	  || { grep '^screenshot:' $(SHOTS)/qgis.log >&2; exit 1; }
	@echo "$(ROOT)/docs/dock.png"

# Install the zip into a QGIS profile (default: yours); the plugin's deps/ folder (installed PyTorch or
# ONNX Runtime) is kept. Then enable LatentSR in Plugins → Manage and Install Plugins.
QGIS_PROFILE ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default
DEPLOY_DIR := $(QGIS_PROFILE)/python/plugins/latentsr
deploy: package
	if [ -L $(DEPLOY_DIR) ]; then rm $(DEPLOY_DIR); fi
	mkdir -p $(DEPLOY_DIR)
	find $(DEPLOY_DIR) -mindepth 1 -maxdepth 1 ! -name deps -exec rm -rf {} +
	/usr/bin/python3 -m zipfile -e $(ROOT)/latentsr.zip $(QGIS_PROFILE)/python/plugins
	@echo "$(DEPLOY_DIR)"
