# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cardd.config import find_config, load_config, parse_config
from cardd.errors import ConfigError

SAMPLE = Path(__file__).parents[2] / "cardd.toml.sample"


def test_sample_parses_to_the_defaults():
    config = parse_config(tomllib.loads(SAMPLE.read_text()))
    assert config.api.port == 7420 and config.api.host == "127.0.0.1"
    assert config.readers.operation_timeout == 30.0
    assert config.api.origins == ()


def test_origins_and_scopes():
    config = parse_config(
        {"api": {"origins": {"https://lib.example.tw": {"scopes": ["moica", "readers"]}}}}
    )
    policy = config.api.origin_policy("https://lib.example.tw")
    assert policy is not None and policy.scopes == {"moica", "readers"}
    assert not policy.allow_page_pin
    assert config.api.origin_policy("https://lib.example.tw:443") is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"api": {"host": "0.0.0.0"}}, "loopback"),
        ({"api": {"host": "192.168.1.5"}}, "loopback"),
        ({"api": {"host": "localhost"}}, "loopback IP"),
        ({"api": {"port": 70000}}, "out of range"),
        ({"api": {"port": True}}, "number"),
        ({"api": {"origins": {"https://*.example.tw": {"scopes": []}}}}, "exactly"),
        ({"api": {"origins": {"null": {"scopes": []}}}}, "exactly"),
        ({"api": {"origins": {"https://a.tw/path": {"scopes": []}}}}, "exactly"),
        ({"api": {"origins": {"http://a.tw": {"scopes": []}}}}, "plain http"),
        ({"api": {"origins": {"https://a.tw": {"scopes": ["root"]}}}}, "unknown scope"),
        ({"readers": {"operation_timeout": 0}}, "positive"),
        ({"readers": {"kinds": {"X": "wireless"}}}, "contact or contactless"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"apii": {}}, "unknown key"),
        ({"api": {"prot": 1}}, "unknown key"),
    ],
)
def test_bad_configuration_is_refused_with_a_reason(raw, fragment):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert fragment in str(e.value)


def test_search_order_and_explicit_path(tmp_path, monkeypatch):
    env_file = tmp_path / "env.toml"
    env_file.write_text("[api]\nport = 7500\n")
    monkeypatch.setenv("CARDD_CONFIG", str(env_file))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert find_config() == env_file
    assert load_config().api.port == 7500
    explicit = tmp_path / "x.toml"
    explicit.write_text("[api]\nport = 7600\n")
    assert load_config(explicit).api.port == 7600
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nport = \n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "line 2" in str(e.value)
