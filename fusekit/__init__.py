"""fusekit: fuse trained single-task ONNX models into one multi-task model."""

__version__ = "0.1.0"
