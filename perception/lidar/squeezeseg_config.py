"""Constants of SqueezeSeg (``kitti_squeezeSeg_config.py`` of the public SqueezeSeg repository), torch-free.

Shared by the torch model, its ONNX export and the numpy reference tests.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("unknown", "car", "pedestrian", "cyclist")
NUM_CLASSES = len(CLASSES)

# x, y, z (m), intensity, range (m) of the KITTI front-view training set
INPUT_MEAN: tuple[float, ...] = (10.88, 0.23, -1.04, 0.21, 12.12)
INPUT_STD: tuple[float, ...] = (11.47, 6.91, 0.86, 0.16, 12.32)

# Recurrent CRF: window (zenith x azimuth), iterations and per-class kernel widths
CRF_WINDOW: tuple[int, int] = (3, 5)
CRF_ITERATIONS = 3
ANG_THETA_A: tuple[float, ...] = (0.9, 0.9, 0.6, 0.6)  # pixels
BILATERAL_THETA_A: tuple[float, ...] = (0.9, 0.9, 0.6, 0.6)  # pixels
BILATERAL_THETA_R: tuple[float, ...] = (0.015, 0.015, 0.01, 0.01)  # normalised xyz units
ANG_FILTER_COEF = 0.02
BI_FILTER_COEF = 0.1

# Training (paper defaults)
CLASS_LOSS_WEIGHTS: tuple[float, ...] = (1 / 15, 1.0, 10.0, 10.0)
CLS_LOSS_COEF = 15.0
LEARNING_RATE = 0.01
LR_DECAY_STEPS = 10_000
LR_DECAY_FACTOR = 0.5
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
MAX_GRAD_NORM = 1.0
BATCH_SIZE = 32
DROPOUT_KEEP_PROB = 0.5
