# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-one-process test test-fast lint format teacher bench bench-sweep ui screenshot clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,cosyvoice]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the report page's browser test (Debian's package; playwright comes with .[test]).
$(BROWSER): scripts/install-browser.sh $(STAMP)
	./scripts/install-browser.sh
	touch $(BROWSER)

# The main job: a Ray Tune sweep (Ray Train per trial, MLflow tracking) on a private local Ray.
demo: $(STAMP)
	$(BIN)/prun-tts sweep --config configs/mini.yaml

# The whole method in one process, no Ray or MLflow.
demo-one-process: $(STAMP)
	$(BIN)/prun-tts demo --config configs/mini.yaml

# MLflow UI on the demo's runs: http://127.0.0.1:5000
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mini/mlflow.db --port 5000

# docs/mlflow-*.png (chart, audio, registry) and docs/report-page.png from the demo's runs (installs chromium + playwright).
screenshot: $(BROWSER)
	$(BIN)/python scripts/mlflow_screenshot.py --db runs/mini/mlflow.db --out docs/mlflow-wer-vs-depth.png
	$(BIN)/python scripts/report_screenshot.py --page runs/sweeps/mini-sweep/report --out docs/report-page.png

# Two pytest workers, a test file each at a time (module fixtures are shared within a file), the
# longest files first (tests/conftest.py orders them by their `slow(minutes=...)` mark).
test: $(STAMP) $(BROWSER)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The inner loop: unit tests only, no real Ray or MLflow processes, no end-to-end runs (under 3 minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not integration"

# Formatting and lint (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-train the shipped mini teacher (orchestrator/assets/mini-teacher) from its recorded seed;
# the old one is replaced only once the new one is complete.
teacher: $(STAMP)
	rm -rf .cache/new-mini-teacher
	$(BIN)/prun-tts train-teacher --config configs/mini.yaml --out .cache/new-mini-teacher
	rm -rf orchestrator/assets/mini-teacher
	mv .cache/new-mini-teacher orchestrator/assets/mini-teacher

# Scorers compared at 50% depth, each distilled on the same budget (about 15 min on 2 cores).
bench: $(STAMP)
	$(BIN)/python benchmarks/scorers.py --config configs/mini.yaml

# The same mini sweep with and without the teacher-output cache, and on 1 vs 2 Train workers.
bench-sweep: $(STAMP)
	$(BIN)/python benchmarks/sweep_cache_scaling.py

clean:
	rm -rf $(VENV) .pytest_cache
