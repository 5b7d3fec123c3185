"""KerasTuner search of QSGLD's hyperparameters: `python -m tuning.search` (or `python tuning/search.py`).

The hypermodel it searches with is `keras_qsgld.experiments.hypermodel`."""
