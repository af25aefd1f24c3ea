"""Export of model folders (ONNX, verified against PyTorch; optional int8)."""
