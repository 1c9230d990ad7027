"""Training: the TFX Trainer module, the training loop, input pipeline, augmentation, losses."""
