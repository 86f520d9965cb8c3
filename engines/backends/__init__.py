"""Optimised DiT backends behind `engines.dit_backend.DiTBackend`: torch.compile, FP8, int8, ONNX export,
TensorRT."""
