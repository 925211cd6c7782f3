# The two commands: `make demo` (train + evaluate a small robust model) and `make test`.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch; on a CUDA machine use e.g. `make demo TORCH="torch>=2.4"`.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
RUN    ?= runs/demo
export ROBUSTACT_DATA ?= $(abspath ../shared/data)

.PHONY: demo demo-baseline test test-slow lint bench gpu-prep clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps pyautoattack torchattacks
	touch $@

demo: $(VENV)/.installed
	@if [ -f $(RUN)/config.yaml ]; then \
		$(BIN)/robustact train --resume $(RUN) --no-progress; \
	else \
		$(BIN)/robustact train --preset demo --out $(RUN) --no-progress; \
	fi
	$(BIN)/robustact eval $(RUN) --attacks fgsm,pgd20,cw --n 1000 --no-progress

# The same network and budget without adversarial training (the baseline the demo is compared with).
demo-baseline: $(VENV)/.installed
	@if [ -f runs/demo-standard/config.yaml ]; then \
		$(BIN)/robustact train --resume runs/demo-standard --no-progress; \
	else \
		$(BIN)/robustact train --preset demo-standard --out runs/demo-standard --no-progress; \
	fi
	$(BIN)/robustact eval runs/demo-standard --attacks fgsm,pgd20,cw --n 1000 --no-progress

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/robustact bench

# What benchmarks/gpu_check.sh carries to a GPU machine without network: a CIFAR-10 subset and the official
# AutoAttack's wheel (both git-ignored). Then, there: `bash benchmarks/gpu_check.sh` (docs/benchmarks.md).
gpu-prep: $(VENV)/.installed
	$(BIN)/python benchmarks/make_gpu_data.py --out .gpu/data
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d .whl pyautoattack

clean-venv:
	rm -rf $(VENV)
