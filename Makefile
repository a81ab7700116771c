# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv themselves: torch==2.13.0 first (the local CPU wheel), then the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench paper venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: venv
	$(VENV)/bin/archdiscover demo

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) benchmarks/optim_step.py
	$(PY) benchmarks/compile_resnet.py

# the paper's seven experiments (docs/RESULTS.md): about 100 minutes on 2 CPU cores
PAPER := mlp_mnist5k convnet_mnist5k autoencoder_mnist5k resnet_vs_torch_pruning flops_budget denoiser_discovery skip_autoencoder
paper: venv
	for s in $(PAPER); do $(PY) benchmarks/paper/$$s.py > docs/results/$$s.json || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
