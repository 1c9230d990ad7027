"""Metrics: Dice (numpy and TFMA), surface distances, HD95 and surface Dice."""
