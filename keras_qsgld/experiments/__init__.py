"""What the example, tuning and benchmark scripts share: data sets, models, default settings.

Not needed to use the optimizers (and not imported by `import keras_qsgld`): it serves the
scripts under `examples/`, `tuning/` and `benchmarks/`, and needs the `examples` extra
(tensorflow-datasets, scikit-learn, mnist1d, matplotlib).

- `datasets`: the data sets as `tf.data` pipelines (on every backend), the resumed
  training stream, the validation hold-out;
- `models`: the paper's models and small ones for the offline data sets;
- `defaults`: the one table of default models, learning rates and the paper's presets;
- `fitting`: training and comparing optimizers, with logs, backups and reports
  (`examples/fit.py`, `examples/demo.py`);
- `hypermodel`: the KerasTuner hypermodel of QSGLD's hyperparameters (`tuning/search.py`;
  needs the `tuning` extra);
- `cli`: how the scripts end: one-line errors (exit code 2), Ctrl-C (exit code 130).
"""
