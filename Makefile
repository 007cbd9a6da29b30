# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates the virtual environment when it is missing. torch is pinned first so that pip
# takes the CPU build instead of pulling a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= runs

.PHONY: demo test test-all test-wheel lint format bench bench-gpu clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,hf]" "$(TORCH)"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/mosaics reproduce moons --out $(OUT)/moons

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(BIN)/.installed
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q --runslow

# the wheel built, installed into a fresh virtualenv outside the checkout, and run (CI runs it)
test-wheel: $(BIN)/.installed
	$(BIN)/python -m pytest -q --runslow tests/test_wheel.py

bench: $(BIN)/.installed
	cd benchmarks && ../$(BIN)/python count_flops.py && ../$(BIN)/python bench_leaky_average.py \
	  && ../$(BIN)/python bench_unit_rows.py && ../$(BIN)/python bench_block_parts.py --products && ../$(BIN)/python bench_readout.py \
	  && ../$(BIN)/python bench_train_step.py \
	  && ../$(BIN)/python bench_decode.py --compile && ../$(BIN)/python bench_step_overhead.py \
	  && ../$(BIN)/python bench_memory_step.py && ../$(BIN)/python bench_memory.py && ../$(BIN)/python bench_memory.py --grad \
	  && ../$(BIN)/python bench_memory.py --grad --mmap-threshold 65536 && ../$(BIN)/python bench_memory.py --saved \
	  && ../$(BIN)/python bench_v2_scaling.py && ../$(BIN)/python bench_small_head.py

# on a CUDA machine: whole models (tokens/s, MFU, kernel profiles) and a block part by part
bench-gpu: $(BIN)/.installed
	mkdir -p results && cd benchmarks && ../$(BIN)/python bench_gpu_paper.py --depths 12 --modes compile \
	  --contexts 512 2048 --leaky triton assoc --isolate 300 --profile ../results/gpu_profiles --budget-s 1500 \
	  --out ../results/gpu_paper.json \
	  && ../$(BIN)/python bench_gpu_ops.py --out ../results/gpu_ops.json

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
