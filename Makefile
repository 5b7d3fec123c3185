# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KERAS_HOME := $(CURDIR)/.keras_home
export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND := tensorflow

.PHONY: venv demo lint test test-keras-floor clean

# torch==2.13.0 first: on these machines pip takes its CPU build from the local wheel folder
# (seconds), where an open range would pull a CUDA build of several GB.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --output-dir results/demo

# Every backend in a process of its own. TensorFlow runs the whole suite; JAX and PyTorch
# run everything but the TensorFlow-only tests (marked) and the TensorFlow script suites;
# JAX again with x64 mode for the float64 maths.
BACKEND_SUITES := tests/test_quantize.py tests/test_schedules.py tests/test_validation.py \
	tests/test_qsgld.py tests/test_qadam.py tests/test_golden.py tests/test_random_rounding.py \
	tests/test_callbacks.py tests/test_keras_integration.py tests/test_robustness.py \
	tests/test_resume.py tests/test_sampling.py tests/test_calibration.py tests/test_examples.py \
	tests/test_benchmarks.py
X64_SUITES := tests/test_quantize.py tests/test_schedules.py tests/test_golden.py \
	tests/test_keras_integration.py::test_float64_variables_keep_float64_maths

# The formatter (Keras' 80 columns) and the linter, as configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: lint
	KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --dist loadfile -q
	KERAS_BACKEND=jax $(PY) -m pytest -n 2 --dist loadfile -q $(BACKEND_SUITES)
	KERAS_BACKEND=jax JAX_ENABLE_X64=1 $(PY) -m pytest -n 2 --dist loadfile -q $(X64_SUITES)
	KERAS_BACKEND=torch $(PY) -m pytest -n 2 --dist loadfile -q $(BACKEND_SUITES)
	$(MAKE) test-keras-floor

# The oldest Keras that pyproject.toml allows, put ahead of the installed one on the path:
# TensorFlow's whole suite and JAX's library suites. Not PyTorch: with PyTorch 2.13, Keras
# before 3.15 breaks torch.compile graphs in keras.ops itself, and 3.10-3.11 crash in Keras'
# own loss code (README, "Install"); for the same reason JAX's test that reopens a
# .keras file on PyTorch is left out.
KERAS_FLOOR := $(shell sed -n 's/.*"keras>=\([0-9.]*\),.*/\1/p' pyproject.toml)
FLOOR := $(CURDIR)/.keras-floor
LIBRARY_SUITES := $(filter-out tests/test_examples.py tests/test_benchmarks.py,$(BACKEND_SUITES))

test-keras-floor: $(STAMP)
	rm -rf $(FLOOR)
	$(PY) -m pip install --quiet --no-deps --target $(FLOOR) "keras==$(KERAS_FLOOR).*"
	PYTHONPATH=$(FLOOR) $(PY) -c "import keras; v = keras.__version__; \
		assert v.startswith('$(KERAS_FLOOR).'), v; print('Keras', v, 'from', keras.__file__)"
	PYTHONPATH=$(FLOOR) KERAS_BACKEND=tensorflow $(PY) -m pytest -n 2 --dist loadfile -q
	PYTHONPATH=$(FLOOR) KERAS_BACKEND=jax $(PY) -m pytest -n 2 --dist loadfile -q \
		$(LIBRARY_SUITES) -k "not moves_to_another_backend"

clean:
	rm -rf $(VENV) results .keras_home .pytest_cache .keras-floor
