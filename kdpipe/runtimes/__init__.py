"""Running a model: onnxruntime sessions, TensorRT engines, torch eager, and the accuracy of
a model on a dataset. Export (parity, the INT8 guard) and profiling both build on these."""
