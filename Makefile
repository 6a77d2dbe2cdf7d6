# Set-up and everyday commands. Each target creates the virtual environment on first use.
#   make demo    train SFT on the built-in sandbox and print accuracy before and after (CPU, about a minute)
#   make test    run the test suite
#   make bench   time a GRPO step against TRL's GRPOTrainer
# On a GPU machine install your CUDA build of torch into .venv first (or set TORCH_SPEC);
# on a CPU-only Linux box, TORCH_INDEX=https://download.pytorch.org/whl/cpu avoids the CUDA wheels.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sftrl-installed

.PHONY: demo test bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, so nothing later swaps it for another build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Each demo run gets its own directory, so running it again never refuses or overwrites an earlier one.
demo: $(STAMP)
	$(VENV)/bin/sftrl train --config recipes/sandbox-sft.yaml output_dir=runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/grpo_step.py --fixed-length --threads 2 --rounds 3

clean-venv:
	rm -rf $(VENV)
