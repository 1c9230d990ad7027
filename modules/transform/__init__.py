"""Transform: decoding, intensity normalisation, resampling, the network grid (TFX Transform module)."""
