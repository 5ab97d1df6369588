from pathlib import Path

import pytest

from harness.config import module_params_dict, resolve
from harness.errors import ConfigError


def test_defaults_when_nothing_set() -> None:
    cfg = resolve({}, environ={}, ini={})
    assert cfg.kernels == ()
    assert cfg.accel == "auto"
    assert cfg.boot_timeout == 120.0
    assert cfg.sources["accel"] == "default"


def test_option_beats_env_beats_ini() -> None:
    env = {"KNH_ACCEL": "kvm", "KNH_BOOT_TIMEOUT": "30"}
    ini = {"knh_accel": "auto", "knh_boot_timeout": "10", "knh_memory": "2G"}
    cfg = resolve({"accel": "tcg"}, environ=env, ini=ini)
    assert cfg.accel == "tcg" and cfg.sources["accel"] == "option --accel"
    assert cfg.boot_timeout == 30.0 and cfg.sources["boot_timeout"] == "environment variable KNH_BOOT_TIMEOUT"
    assert cfg.memory == "2G" and cfg.sources["memory"] == "ini key knh_memory"


def test_multi_values_from_each_source() -> None:
    assert resolve({"kernels": ["a", "b"]}, environ={}, ini={}).kernels == ("a", "b")
    assert resolve({}, environ={"KNH_KERNEL": "6.1.0-56-amd64, 6.12.117+deb12-amd64"}, ini={}).kernels == (
        "6.1.0-56-amd64",
        "6.12.117+deb12-amd64",
    )
    assert resolve({}, environ={}, ini={"knh_kernels": ["x"]}).kernels == ("x",)


@pytest.mark.parametrize(
    ("options", "env", "ini", "fragment"),
    [
        ({"accel": "fast"}, {}, {}, "from option --accel"),
        ({}, {"KNH_BOOT_TIMEOUT": "-3"}, {}, "from environment variable KNH_BOOT_TIMEOUT"),
        ({}, {}, {"knh_cpus": "zero"}, "from ini key knh_cpus"),
        ({}, {}, {"knh_memory": "lots"}, "from ini key knh_memory"),
        ({"module_params": ["proto"]}, {}, {}, "from option --module-param"),
    ],
)
def test_invalid_value_names_its_source(options: dict, env: dict, ini: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve(options, environ=env, ini=ini)


def test_results_dir_is_a_path() -> None:
    assert resolve({}, environ={"KNH_RESULTS_DIR": "/tmp/r"}, ini={}).results_dir == Path("/tmp/r")


def test_module_params_dict() -> None:
    assert module_params_dict(["proto=31", "require_cap=1", "x="]) == {"proto": "31", "require_cap": "1", "x": ""}
    with pytest.raises(ValueError):
        module_params_dict(["1bad=3"])


def test_harness_config_defaults_are_the_settings_table_defaults() -> None:
    from harness.config import HarnessConfig

    assert HarnessConfig() == resolve({}, environ={}, ini={})


@pytest.mark.parametrize(
    ("value", "helpers"),
    [("auto", ("kfence",)), ("default", ("kfence",)), ("off", ()), ("none", ()), ("0", ()),
     ("all", ("kfence", "slub")), ("slub", ("slub",)), ("kfence, slub", ("kfence", "slub")),
     ("SLUB kfence", ("slub", "kfence")), ("slub,slub", ("slub",))],
)  # fmt: skip
def test_memory_debug_values(value: str, helpers: tuple[str, ...]) -> None:
    assert resolve({}, environ={"KNH_MEMORY_DEBUG": value}, ini={}).memory_debug == helpers


def test_memory_debug_is_a_setting_like_the_others() -> None:
    """KNH_MEMORY_DEBUG goes through the settings table: option > environment > ini > default."""
    assert resolve({}, environ={}, ini={}).memory_debug == ("kfence",)
    ini = {"knh_memory_debug": "slub"}
    assert resolve({}, environ={}, ini=ini).memory_debug == ("slub",)
    assert resolve({}, environ={"KNH_MEMORY_DEBUG": "off"}, ini=ini).memory_debug == ()
    cfg = resolve({"memory_debug": "all"}, environ={"KNH_MEMORY_DEBUG": "off"}, ini=ini)
    assert cfg.memory_debug == ("kfence", "slub") and cfg.sources["memory_debug"] == "option --memory-debug"


def test_memory_debug_names_the_unknown_helper_its_source_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"invalid memory debug 'kasan' from environment variable KNH_MEMORY_DEBUG: "
                       r"unknown helper\(s\) kasan; use auto, off, all or a list of kfence, slub"):  # fmt: skip
        resolve({}, environ={"KNH_MEMORY_DEBUG": "kasan"}, ini={})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [("boot_timeout", "0", "must be > 0"), ("boot_timeout", "-1.5", "must be > 0"),
     ("command_timeout", "0", "must be > 0"), ("settle", "-0.1", "must be >= 0"), ("cpus", "0", "must be > 0"),
     ("boot_retries", "-1", "must be >= 0"), ("kernel_jobs", "-2", "must be >= 0"),
     ("load_check", "-1", "must be >= 0"), ("cpus", "1.5", "invalid literal for int"),
     ("settle", "soon", "could not convert")],
)  # fmt: skip
def test_number_settings_say_what_they_must_be(name: str, value: str, message: str) -> None:
    from harness.config import SETTINGS_BY_NAME

    with pytest.raises(ConfigError, match=rf"from environment variable \w+: {message}"):
        resolve({}, environ={SETTINGS_BY_NAME[name].env: value}, ini={})


def test_number_settings_take_their_bounds() -> None:
    env = {"KNH_SETTLE": "0", "KNH_BOOT_RETRIES": "0", "KNH_CPUS": "1", "KNH_BOOT_TIMEOUT": "0.5"}
    cfg = resolve({}, environ=env, ini={})
    assert (cfg.settle, cfg.boot_retries, cfg.cpus, cfg.boot_timeout) == (0.0, 0, 1, 0.5)
    assert isinstance(cfg.cpus, int) and isinstance(cfg.settle, float)
