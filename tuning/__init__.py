"""KerasTuner search of QSGLD's hyperparameters (`tuning/search.py`, `tuning/hypermodel.py`)."""
