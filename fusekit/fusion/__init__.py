"""Fusion (EMM III-B, III-C): sources, AKF, the fused model, training and export of fused.onnx."""
