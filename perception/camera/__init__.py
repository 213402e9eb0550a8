"""Camera detection helpers (pure numpy): SqueezeDet anchors, box coding, IoU, NMS, post-processing."""
