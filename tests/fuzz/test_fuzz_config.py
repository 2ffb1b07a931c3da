"""Fuzzing config files (YAML, JSON, TOML, raw bytes) and `--set` values: load_config
returns a RunConfig or raises an LMForgeError with a message, whatever the input."""

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lmforge.config import RunConfig, all_keys, load_config
from lmforge.errors import ConfigError

from .profiles import fuzz_settings, timeout_s, user_error_or_result

pytestmark = pytest.mark.timeout(timeout_s())

KEYS = [key for key, _, _ in all_keys()]
SECTIONS = sorted({key.split(".")[0] for key in KEYS})
NAMES = sorted({key.split(".")[1] for key in KEYS})

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["gpt", "bert", "rope", "3e-4", "nan", "inf", "-1", "0", "1e999"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(NAMES), inner, max_size=4)
    ),
    max_leaves=12,
)
sections = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), json_values, max_size=5)
configs = st.dictionaries(
    st.sampled_from(SECTIONS) | st.text(max_size=8),
    sections | json_values,
    max_size=4,
)
set_values = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda key, value: f"{key}={value}",
        st.sampled_from(KEYS) | st.text(max_size=12),
        st.text(max_size=16) | scalars.map(str),
    ),
)


def _toml(data: dict) -> str:
    """A TOML rendering good enough to fuzz with: [section] tables of JSON-written values."""
    lines = []
    for section, body in data.items():
        if not isinstance(body, dict):
            lines.append(f"{json.dumps(section)} = {json.dumps(body, default=str)}")
            continue
        lines.append(f"[{json.dumps(section)}]")
        lines += [f"{json.dumps(k)} = {json.dumps(v, default=str)}" for k, v in body.items()]
    return "\n".join(lines)


def _write(path: Path, data: dict) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(data), encoding="utf-8")
    elif path.suffix == ".toml":
        path.write_text(_toml(data), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@fuzz_settings(ci_examples=150)
@given(
    data=configs,
    suffix=st.sampled_from([".yaml", ".json", ".toml"]),
    sets=st.lists(set_values, max_size=3),
)
def test_config_files_load_or_raise_a_user_error(tmp_path: Path, data, suffix, sets) -> None:
    path = _write(tmp_path / f"fuzz{suffix}", data)
    result = user_error_or_result(lambda: load_config(path, sets))
    assert isinstance(result, RunConfig | ConfigError)


@fuzz_settings(ci_examples=100)
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".yaml", ".yml", ".json", ".toml"]))
def test_raw_bytes_as_a_config_file(tmp_path: Path, raw: bytes, suffix: str) -> None:
    path = tmp_path / f"raw{suffix}"
    path.write_bytes(raw)
    user_error_or_result(lambda: load_config(path, []))


@fuzz_settings(ci_examples=150)
@given(sets=st.lists(set_values, min_size=1, max_size=4))
def test_set_values_load_or_raise_a_user_error(sets: list[str]) -> None:
    user_error_or_result(lambda: load_config(None, sets))


# ---------------------------------------------------------------- regressions the fuzzer found


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"model:\n  arch: caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, [])


def test_set_into_a_section_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text("model: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="model"):
        load_config(path, ["model.n_layer=2"])
