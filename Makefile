# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KERAS_HOME := $(CURDIR)/.keras_home
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND := tensorflow

.PHONY: venv demo lint docs browser test test-keras-floor clean

# torch==2.13.0 first, its CPU build: from PyTorch's CPU index (the one install.md gives), or
# from a local wheel folder where pip is configured with one; PyPI alone would bring the CUDA
# build and its CUDA wheels (several GB). Torch alone (--no-deps) from there: its own
# dependencies come with the package's. Where PyTorch's index cannot be reached, pip says so
# on a line and goes on (a short timeout and one retry bound the wait).
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps --timeout 10 --retries 1 \
		--extra-index-url $(TORCH_CPU_INDEX) "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.demo --output-dir results/demo

# Every backend in a process of its own, each running every test its `backends` marker allows
# (tests/conftest.py); JAX again with x64 mode, for the tests marked float64 or x64.
PYTEST := $(PY) -m pytest -n 2 --dist loadfile -q

# The formatter (Keras' 80 columns) and the linter, as configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The documentation site, into site/ (ignored), every warning an error (mkdocs.yml: strict).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 TF_CPP_MIN_LOG_LEVEL=3 $(VENV)/bin/mkdocs build --strict --quiet

# A headless Chromium and its driver from the distribution, for the site's browser test.
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

# The docstrings' examples, on the default backend.
DOCTESTED := keras_qsgld/qsgld.py keras_qsgld/qadam.py keras_qsgld/langevin.py \
	keras_qsgld/sampling/sampler.py keras_qsgld/sampling/predictive.py

test: lint docs browser
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules $(DOCTESTED)
	KERAS_BACKEND=tensorflow $(PYTEST) tests
	KERAS_BACKEND=jax $(PYTEST) tests
	KERAS_BACKEND=jax JAX_ENABLE_X64=1 $(PYTEST) -m "float64 or x64" tests/library
	KERAS_BACKEND=torch $(PYTEST) tests
	$(MAKE) test-keras-floor

# The oldest Keras that pyproject.toml allows, put ahead of the installed one on the path:
# TensorFlow's whole suite and JAX's library tests. Not PyTorch: with PyTorch 2.13, Keras
# before 3.15 breaks torch.compile graphs in keras.ops itself, and 3.10-3.11 crash in Keras'
# own loss code (README, "Install"); for the same reason JAX's test that reopens a
# .keras file on PyTorch is left out.
KERAS_FLOOR := $(shell sed -n 's/.*"keras>=\([0-9.]*\),.*/\1/p' pyproject.toml)
FLOOR := $(CURDIR)/.keras-floor

test-keras-floor: $(STAMP)
	rm -rf $(FLOOR)
	$(PY) -m pip install --quiet --no-deps --target $(FLOOR) "keras==$(KERAS_FLOOR).*"
	PYTHONPATH=$(FLOOR) $(PY) -c "import keras; v = keras.__version__; \
		assert v.startswith('$(KERAS_FLOOR).'), v; print('Keras', v, 'from', keras.__file__)"
	PYTHONPATH=$(FLOOR) KERAS_BACKEND=tensorflow $(PYTEST) tests
	PYTHONPATH=$(FLOOR) KERAS_BACKEND=jax $(PYTEST) tests/library \
		-k "not moves_to_another_backend"

clean:
	rm -rf $(VENV) results site .keras_home .pytest_cache .keras-floor
