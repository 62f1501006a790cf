"""The device unit's Environment= lines (device/systemd_unit.py), as the device bench and `make demo` apply them."""

from device.systemd_unit import UNIT, unit_environment


def test_the_units_environment_is_read():
    env = unit_environment()
    assert env["MALLOC_ARENA_MAX"] == "2" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert UNIT.name == "aula-device.service"


def test_values_keep_their_equals_signs_and_a_missing_unit_gives_none(tmp_path):
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nEnvironment=A=b=c\n# Environment=B=1\nExecStart=/bin/true\n")
    assert unit_environment(unit) == {"A": "b=c"}
    assert unit_environment(tmp_path / "absent.service") == {}
