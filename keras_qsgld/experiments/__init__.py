"""What the example, tuning and benchmark scripts share: data sets, models, default settings.

Not needed to use the optimizers (and not imported by `import keras_qsgld`): it serves the
scripts under `examples/`, `tuning/` and `benchmarks/`, and needs the `examples` extra
(tensorflow-datasets, scikit-learn, mnist1d).
"""
