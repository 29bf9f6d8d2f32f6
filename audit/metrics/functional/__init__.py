"""Pure metric kernels: tensors in, per-image values out."""
