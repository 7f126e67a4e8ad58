"""ONNX handling: the op table, the ONNX-to-torch interpreter, sessions, export and serving passes."""
