"""Optimised DiT backends behind `engines.dit_backend.DiTBackend`: torch.compile, ONNX export, TensorRT."""
