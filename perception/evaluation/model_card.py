"""Model cards beside shipped models: ``NAME.json`` (machine-readable) and ``NAME.md`` (for people).

A card says what the model is (architecture, input size, ONNX opset, sha256, parameters), what it was
trained on and for how long, and every metric with the command that measured it. torch-free: the
export writes the first version, ``perception eval ... --card`` adds measured metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from perception.io.common import atomic_write_text

PathLike = str | os.PathLike[str]


def card_paths(model_path: PathLike) -> tuple[Path, Path]:
    path = Path(model_path)
    return path.with_suffix(".json"), path.with_suffix(".md")


def read_card(model_path: PathLike) -> dict[str, Any]:
    json_path, _ = card_paths(model_path)
    return json.loads(json_path.read_text()) if json_path.is_file() else {}


def write_card(model_path: PathLike, card: dict[str, Any]) -> None:
    json_path, md_path = card_paths(model_path)
    atomic_write_text(json_path, json.dumps(card, indent=2, sort_keys=False) + "\n")
    atomic_write_text(md_path, render_markdown(card))


def add_metrics(model_path: PathLike, name: str, metrics: dict[str, Any], command: str, data: str) -> dict[str, Any]:
    """Record one evaluation (metrics, the data it ran on, the command) in the model's card."""
    card = read_card(model_path)
    card.setdefault("metrics", {})[name] = {"data": data, "command": command, "values": metrics}
    write_card(model_path, card)
    return card


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.2f}"  # NaN
    return str(value)


def render_markdown(card: dict[str, Any]) -> str:
    lines = [f"# {card.get('name', 'model')}", ""]
    for key in ("task", "architecture", "input", "parameters", "onnx_opset", "sha256", "file_size_bytes"):
        if key in card:
            lines.append(f"- **{key.replace('_', ' ')}**: {_fmt(card[key])}")
    training = card.get("training", {})
    lines += ["", "## Training", ""]
    for key, value in training.items():
        lines.append(
            f"- **{key.replace('_', ' ')}**: {_fmt(value) if not isinstance(value, dict) else json.dumps(value)}"
        )
    if not training:
        lines.append("- not trained")
    lines += ["", "## Metrics", ""]
    metrics = card.get("metrics", {})
    if not metrics:
        lines += ["No metrics measured yet.", ""]
    for name, entry in metrics.items():
        lines += [f"### {name}", "", f"Data: {entry['data']}", "", f"Command: `{entry['command']}`", ""]
        values = entry["values"]
        first = next((row for row in values.values() if isinstance(row, dict)), {})
        columns = list(first)
        rows = {name: row for name, row in values.items() if isinstance(row, dict) and list(row) == columns}
        if rows:  # per-class tables; the other entries (frames, metric, counts) follow as a list
            lines.append("| class | " + " | ".join(columns) + " |")
            lines.append("|---" * (len(columns) + 1) + "|")
            for row_name, row in rows.items():
                lines.append(f"| {row_name} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
            lines.append("")
        for key, value in values.items():
            if key not in rows:
                lines.append(f"- {key}: {json.dumps(value) if isinstance(value, dict | list) else _fmt(value)}")
        lines.append("")
    shown = {"name", "task", "architecture", "input", "parameters", "onnx_opset", "sha256", "file_size_bytes",
             "training", "metrics", "notes"}  # fmt: skip
    for key, value in card.items():
        if key in shown:
            continue
        lines += [f"## {key.replace('_', ' ').capitalize()}", ""]
        if isinstance(value, dict):
            lines += [f"- **{k.replace('_', ' ')}**: {_fmt(v) if not isinstance(v, dict | list) else json.dumps(v)}"
                      for k, v in value.items()]  # fmt: skip
        else:
            lines.append(_fmt(value))
        lines.append("")
    if card.get("notes"):
        lines += ["## Notes", "", card["notes"], ""]
    return "\n".join(lines).rstrip() + "\n"
