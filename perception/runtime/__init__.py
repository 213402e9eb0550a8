"""ONNX Runtime inference: sessions with provider choice, the LiDAR segmenter. numpy + onnxruntime only."""
