"""The deployed file: evaluating and predicting with any ONNX model in onnxruntime."""
