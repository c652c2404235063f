"""Feature spec, training, evaluation and ONNX export; the shipped default model in `default/`."""
