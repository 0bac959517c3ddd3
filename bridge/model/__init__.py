"""Model stage: descriptions of the models, presets, the ONNX Runtime runner, synthetic models."""
