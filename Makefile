# The single entry point: the README, CI and developers all call these targets.
# ORT=cpu (default) installs onnxruntime; ORT=gpu installs onnxruntime-gpu instead, never both.
PYTHON ?= python3
VENV ?= .venv
# ORT sticks to what the venv has: after `make install-gpu`, plain `make test` keeps the GPU wheel.
ORT ?= $(if $(wildcard $(VENV)/.installed-gpu),gpu,cpu)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(ORT)

.PHONY: install install-gpu demo test lint bench clean train-demo bench-model

install: $(STAMP)

# Editable installs list the top-level packages: a new package needs a reinstall too.
$(STAMP): pyproject.toml $(wildcard */__init__.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# Both wheels ship the same `onnxruntime` module and the last one installed wins:
	@# remove both, then install exactly the one asked for.
	$(PY) -m pip uninstall --quiet --yes onnxruntime onnxruntime-gpu
	$(PY) -m pip install --quiet -e ".[$(ORT),dev]"
	rm -f $(VENV)/.installed-*
	touch $@

install-gpu:
	$(MAKE) install ORT=gpu

demo: install
	$(VENV)/bin/onnxq demo

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(VENV)/bin/onnxq bench --model chest-xray-classifier-demo

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Retraining the demo model and building the ResNet-18-class benchmark model need PyTorch, which
# onnxq itself never imports: they get a venv of their own.
TRAIN_VENV ?= .venv-train

$(TRAIN_VENV)/.installed:
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install --quiet --upgrade pip
	$(TRAIN_VENV)/bin/pip install --quiet torch==2.13.0 onnx onnxscript onnxruntime numpy pillow
	touch $@

train-demo: $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python scripts/train_demo_model.py

bench-model: $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python scripts/train_demo_model.py --bench-resnet18
