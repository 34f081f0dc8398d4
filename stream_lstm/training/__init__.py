"""Offline work: ``train.py`` (fit a model and write its artifact), ``evaluate.py`` (score it next
to the baselines), ``predict.py`` (forecasts for a file, as the worker would publish them).
The streaming side never imports this package."""
