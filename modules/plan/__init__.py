"""Experiment planning: the dataset fingerprint and the rules that turn it into a plan."""
