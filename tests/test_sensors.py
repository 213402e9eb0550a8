from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.lidar.sensors import (
    HDL64E_KITTI_ELEVATIONS_DEG,
    SENSORS,
    SensorSpec,
    SensorSpecError,
    load_sensor,
)


def test_builtin_sensors_have_expected_shapes():
    assert SENSORS["kitti-front"].shape == (64, 512)
    assert SENSORS["hdl64e-360"].shape == (64, 2048)
    assert SENSORS["vlp16"].height == 16
    assert SENSORS["vlp32c"].height == 32
    assert SENSORS["os1-64"].height == 64
    front = SENSORS["kitti-front"]
    assert front.azimuth_left_deg == 45.0 and front.azimuth_right_deg == -45.0
    assert front.azimuth_resolution_deg == pytest.approx(90 / 512)
    for spec in SENSORS.values():
        assert np.all(np.diff(spec.beam_elevations_deg) < 0), spec.name


def test_hdl64e_table_is_non_uniform_and_spans_the_design_range():
    elev = np.asarray(HDL64E_KITTI_ELEVATIONS_DEG)
    gaps = -np.diff(elev)
    assert elev[0] == pytest.approx(2.3, abs=0.1) and elev[-1] == pytest.approx(-23.6, abs=0.1)
    assert gaps.min() > 0.2 and gaps.max() < 0.65 and gaps.max() / gaps.min() > 2


def test_rows_pick_the_nearest_beam_and_reject_outside():
    spec = SENSORS["vlp16"]
    rows = spec.rows_of(np.array([15.0, 14.1, 13.9, -15.0, 0.9, 1.1, 16.1, -16.1]))
    assert rows.tolist() == [0, 0, 1, 15, 7, 7, -1, -1]


def test_columns_front_view_and_wraparound():
    front = SENSORS["kitti-front"]
    assert front.cols_of(np.array([44.99, 0.01, -0.01, -44.99, 46.0, -46.0, 180.0])).tolist() == [
        0,
        255,
        256,
        511,
        -1,
        -1,
        -1,
    ]
    full = SENSORS["hdl64e-360"]
    cols = full.cols_of(np.array([180.0, 179.99, -179.99, 0.0, -180.0]))
    assert cols.tolist() == [0, 0, 2047, 1024, 0]


def test_a_field_of_view_across_180_deg_wraps():
    rear = SensorSpec(
        name="rear", beam_elevations_deg=(1.0, -1.0), width=80,
        azimuth_left_deg=270.0, azimuth_right_deg=190.0, max_range_m=100.0,
    )  # fmt: skip
    # atan2 gives -100 for 260 deg and -169.5 for 190.5 deg; the right edge (190) is outside
    assert rear.cols_of(np.array([-100.0, 260.0, -169.5, 200.0, 269.9, -170.0, 180.0, 0.0])).tolist() == [
        10, 10, 79, 70, 0, -1, -1, -1,
    ]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(left=st.floats(-180.0, 180.0), span=st.floats(0.5, 360.0), seed=st.integers(0, 2**32 - 1))
def test_the_azimuth_prefilter_keeps_every_point_a_column_takes(left, span, seed):
    spec = SensorSpec(
        name="sector", beam_elevations_deg=(1.0, -1.0), width=64,
        azimuth_left_deg=left, azimuth_right_deg=left - span, max_range_m=100.0,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    # random directions plus directions on and next to the column edges
    edges = np.radians(spec.azimuth_left_deg - np.arange(spec.width + 1) * spec.azimuth_resolution_deg)
    azimuth = np.concatenate([rng.uniform(-np.pi, np.pi, 2000), edges, edges + 1e-9, edges - 1e-9])
    distance = rng.uniform(0.1, 100.0, azimuth.size)
    x, y = distance * np.cos(azimuth), distance * np.sin(azimuth)
    candidates = spec.azimuth_candidates(x, y)
    if span + 1.0 >= 180.0:
        assert candidates is None
        return
    on_a_column = spec.cols_of(np.degrees(np.arctan2(y, x))) >= 0
    assert candidates[on_a_column].all()
    # and it is narrow: nothing more than a degree outside the field of view
    off_centre = np.abs(np.angle(np.exp(1j * (azimuth - np.radians(left - span / 2)))))
    assert not candidates[off_centre > np.radians(span / 2 + 1.0)].any()


def test_user_defined_sensor_from_yaml_and_json(tmp_path):
    yaml_path = tmp_path / "my.yaml"
    yaml_path.write_text("name: my-lidar\nbeams: 8\nfov_up_deg: 7\nfov_down_deg: -7\nwidth: 256\nmax_range_m: 80\n")
    spec = load_sensor(yaml_path)
    assert spec.shape == (8, 256) and spec.beam_elevations_deg[0] == 7.0 and spec.is_full_sweep
    json_path = tmp_path / "table.json"
    json_path.write_text(json.dumps(spec.to_dict() | {"name": "copy"}))
    assert load_sensor(json_path).beam_elevations_deg == spec.beam_elevations_deg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nbeams: 8\nfov_up_deg: 7\nfov_down_deg: -7\nmax_range_m: 80\n", "missing field 'width'"),
        ("name: a\nbeam_elevations_deg: [1, 2]\nwidth: 8\nmax_range_m: 80\n", "strictly decreasing"),
        ("name: a\nbeams: 8\nfov_up_deg: 7\nfov_down_deg: -7\nwidth: 8\nmax_range_m: 80\ncolour: red\n", "unknown"),
        ("- just a list\n", "mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_sensor_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SensorSpecError, match=message) as info:
        load_sensor(path)
    assert str(path) in str(info.value)


def test_unknown_sensor_name_lists_choices():
    with pytest.raises(SensorSpecError, match="kitti-front"):
        load_sensor("hdl-65")


def test_invalid_spec_values():
    with pytest.raises(SensorSpecError):
        SensorSpec("x", (1.0, 0.0), width=0, azimuth_left_deg=45, azimuth_right_deg=-45, max_range_m=10)
    with pytest.raises(SensorSpecError):
        SensorSpec("x", (1.0, 0.0), width=8, azimuth_left_deg=45, azimuth_right_deg=50, max_range_m=10)
    with pytest.raises(SensorSpecError):
        SensorSpec("x", (1.0, float("nan")), width=8, azimuth_left_deg=45, azimuth_right_deg=-45, max_range_m=10)
