"""The medtfx pipeline: DAG, typed config, runners and the `medtfx` CLI."""

import os

# oneDNN kernels make 3D convolution gradients several times faster on CPU (README:
# Dependencies); TF leaves them off on CPUs without AVX-512. Must be set before TensorFlow loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
