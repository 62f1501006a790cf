"""The adaptive analysis rate and the strict vision config around it."""

import pytest

from device.analysis_rate import AnalysisRate
from device.config import VisionConfig
from device.errors import ConfigError


def test_cheap_frames_run_at_the_target_rate():
    rate = AnalysisRate(target_fps=10, min_fps=1, max_duty=0.5)
    rate.observe(0.005)
    assert rate.fps == 10


def test_expensive_frames_lower_the_rate_to_the_cpu_share_but_not_below_the_floor():
    rate = AnalysisRate(target_fps=10, min_fps=1, max_duty=0.5, smoothing=1.0)
    rate.observe(0.1)  # 100 ms per analysis at 50% of a core -> 5 fps
    assert rate.fps == pytest.approx(5.0)
    rate.observe(2.0)
    assert rate.fps == 1.0 and rate.period == 1.0


def test_rate_recovers_smoothly_when_the_room_empties():
    rate = AnalysisRate(target_fps=10, min_fps=1, max_duty=0.5, smoothing=0.5)
    rate.observe(0.25)
    fps = [rate.fps]
    for _ in range(10):
        rate.observe(0.01)
        fps.append(rate.fps)
    assert fps == sorted(fps) and fps[-1] == 10


def test_invalid_rates_are_rejected():
    with pytest.raises(ValueError):
        AnalysisRate(target_fps=1, min_fps=2)
    with pytest.raises(ValueError):
        VisionConfig(analysis_fps=1, min_analysis_fps=2)


def test_config_error_for_cross_field_rule(tmp_path):
    from device.config import load_config

    f = tmp_path / "d.yaml"
    f.write_text("vision:\n  analysis_fps: 1\n  min_analysis_fps: 2\n")
    with pytest.raises(ConfigError, match="min_analysis_fps must not exceed"):
        load_config(f)


def test_admit_spaces_frames_by_capture_time_and_restart_forgets_the_schedule():
    rate = AnalysisRate(target_fps=5, min_fps=1)
    admitted = [t / 30 for t in range(60) if rate.admit(t / 30)]  # a 30 fps camera for 2 s
    assert len(admitted) == 10 and admitted[0] == 0.0
    rate.restart()
    assert rate.admit(0.0)  # a reopened replay starts its clock again
