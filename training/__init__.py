"""Training, bundling and benchmarking of LatentSR's networks (imports engine, never qgis).

Run from the repository root: ``python -m training stage1|e2diffsr|lcmsr|bundle|export-onnx|bench-onnx|bench-speed ...``.
"""
