"""Networks: U-Nets (3D, 2D slice-wise) and the 3D ResNet classifier (tf_keras)."""
