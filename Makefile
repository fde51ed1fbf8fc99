# covserve developer entry points. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
UCI_DIR ?= ../shared/datasets/uci

.PHONY: install test lint demo bench clean

install: $(STAMP)

# scripts/install.sh is the install step the Docker images run too (with their own extras).
$(STAMP): pyproject.toml $(CONSTRAINTS) scripts/install.sh
	$(PYTHON) -m venv $(VENV)
	sh scripts/install.sh $(BIN)/python train,dev,cpu,bench editable
	touch $(STAMP)

test: install
	$(BIN)/pytest -q -n auto --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint docker/*.Dockerfile

# The main job: train the demo model unless the repository already has a version, then serve the
# repository on 127.0.0.1:8000 until Ctrl-C.
demo: install
	$(BIN)/covserve-train fit --config configs/demo.yaml --skip-if-published
	$(BIN)/covserve-serve --repository models --host 127.0.0.1 --port 8000

bench: install
	$(BIN)/python benchmarks/tac.py
	$(BIN)/python benchmarks/pseudolabels.py --output benchmarks/results/pseudolabels.md
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/pseudolabels.py --schemes --output benchmarks/results/label_schemes.md
	$(BIN)/python benchmarks/serving.py --output benchmarks/results/serving.md
	$(BIN)/python benchmarks/gpu.py --output benchmarks/results/gpu/gpu.md
	$(BIN)/python benchmarks/synthetic.py
	$(BIN)/python benchmarks/uci.py --data-dir $(UCI_DIR)
	$(BIN)/python benchmarks/w2_rows.py
	$(BIN)/python benchmarks/beyond_paper.py --results-dir benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
