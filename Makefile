# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test teacher bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/prun-tts demo --config configs/mini.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

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

clean:
	rm -rf $(VENV) .pytest_cache
