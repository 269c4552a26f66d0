# Everything runs inside a project-local virtualenv that these targets create on demand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export YOLO_CONFIG_DIR ?= $(CURDIR)/$(VENV)/ultralytics-config
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test lint demo demo-study coco-mini bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[train,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(VENV)/bin/dclip run --config training/configs/experiments/demo.yaml --output_dir $(RUN_DIR)/demo

demo-study: $(STAMP)
	$(VENV)/bin/dclip study --config training/configs/experiments/demo.yaml --seeds 0 1 2 --output_dir $(RUN_DIR)/demo-study

coco-mini: $(STAMP)
	$(VENV)/bin/dclip run --config training/configs/experiments/coco_mini.yaml --output_dir $(RUN_DIR)/coco_mini

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(RUN_DIR) .pytest_cache build *.egg-info
