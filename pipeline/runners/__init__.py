"""Runners: local (the embedded default) and Kubeflow Pipelines v2."""
