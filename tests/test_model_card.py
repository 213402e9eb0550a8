"""Model cards: JSON + Markdown beside a model, metrics recorded with their data and command."""

from __future__ import annotations

import json

from perception.evaluation.model_card import add_metrics, read_card, write_card


def test_detection_metrics_with_scalar_fields_render_as_a_table_and_a_list(tmp_path):
    model = tmp_path / "squeezedet.onnx"
    model.write_bytes(b"onnx")
    write_card(model, {"name": "squeezedet", "task": "detection", "training": {"data_kind": "synthetic"}})
    table = {
        "car": {"easy": 41.5, "moderate": 30.25, "hard": None},
        "pedestrian": {"easy": float("nan"), "moderate": 1.0, "hard": 0.5},
        "metric": "R40",
        "frames": 16,
        "ground_truth_boxes": {"Car": 120},
    }
    add_metrics(model, "held-out", table, "perception eval det --data D", "D (16 frames)")
    card = read_card(model)
    assert card["metrics"]["held-out"]["values"]["frames"] == 16
    markdown = model.with_suffix(".md").read_text()
    assert "| class | easy | moderate | hard |" in markdown
    assert "| car | 41.50 | 30.25 | None |" in markdown
    assert "| pedestrian | n/a | 1.00 | 0.50 |" in markdown
    assert "- metric: R40" in markdown and "- frames: 16" in markdown
    assert '- ground_truth_boxes: {"Car": 120}' in markdown  # not a row: its keys are not the table's columns
    json.loads(model.with_suffix(".json").read_text())  # NaN is written as JSON that parses back
