"""Export: ONNX (verified against PyTorch), INT8 quantization, and later FP16/TensorRT/bundles."""
