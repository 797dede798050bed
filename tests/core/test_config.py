"""Config: every default loads, every key of the example is accepted, bad input is refused by key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent import config
from edgeagent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _uncommented_example() -> str:
    """config.example.toml with every `# key = value` line switched on."""
    out = []
    for line in (REPO / "config.example.toml").read_text().splitlines():
        s = line.strip()
        if s.startswith("# ") and "=" in s and not s.startswith("# ("):
            body = s[2:].split("  #")[0].rstrip()
            if body.split("=")[0].strip().replace("_", "").isalnum():
                out.append(body)
                continue
        out.append(line)
    return "\n".join(out)


def test_example_documents_every_key_with_its_default(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(_uncommented_example())
    cfg = config.load(p)
    # the documented defaults are the real defaults
    assert config.to_dict(cfg) == config.to_dict(config.Config())
    # and every key of the schema appears in the example
    text = _uncommented_example()

    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    for key in keys(config.to_dict(config.Config())):
        assert f"\n{key.split('.')[-1]} = " in "\n" + text, key


@pytest.mark.parametrize(
    "toml, fragment",
    [
        ("[model]\nnum_threads = \"four\"", "model.num_threads: expected an integer"),
        ("[model]\nbackend = \"cuda\"", "model.backend: must be one of"),
        ("[model]\ncheck_finite_every = 0", "model.check_finite_every: must be between"),
        ("[mqtt]\nport = 70000", "mqtt.port: must be between"),
        ("[mqtt]\nprotocl = \"5\"", "mqtt.protocl: unknown key"),
        ("[bogus]\nx = 1", "bogus: unknown key"),
        ("[input]\nrate_hz = true", "input.rate_hz: expected a number"),
        ("[input]\nsource = \"images\"", "input.images.dir: required"),
        ("[model]\nname = \"bad name!\"", "model.name: must match"),
        ("[update]\nthreshold = 0", "update.threshold: must be >= 1"),
        ("[device]\ngroups = [\"a/b\"]", "device.groups: bad group name"),
        ("[mqtt.tls]\ncert = \"/c.pem\"", "mqtt.tls: cert and key must be given together"),
        ("[input.camera]\nwidth = -1", "input.camera.width: must be >= 0"),
        ("model = 3", "model: expected a table"),
        ("[model\nname=", "config.syntax"),
    ],
)
def test_bad_values_are_refused_with_the_key(tmp_path, toml, fragment):
    p = tmp_path / "c.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert fragment in str(ei.value)
    assert str(p) in str(ei.value)


def test_cli_exit_code_2_and_one_line_error(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[model]\nnum_threads = -3\n")
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(p), "run"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr
    assert "model.num_threads" in r.stderr and "Traceback" not in r.stderr


def test_missing_config_file_is_a_config_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeagent", "-c", str(tmp_path / "nope.toml"), "status"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "config.not_found" in r.stderr


def test_runtime_tunable_keys():
    cfg = config.Config()
    new = config.with_key(cfg, "input.rate_hz", 25)
    assert new.input.rate_hz == 25.0 and cfg.input.rate_hz == 10.0
    with pytest.raises(ConfigError) as ei:
        config.with_key(cfg, "model.backend", "tflite")
    assert ei.value.code == "config.not_tunable"
    with pytest.raises(ConfigError) as ei:
        config.with_key(cfg, "telemetry.interval_s", 0)
    assert "telemetry.interval_s" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        config.get_key(cfg, "nope.key")
    assert ei.value.code == "config.unknown_key"


def test_topic_prefix_expands_device_id():
    cfg = config.from_dict({"device": {"id": "cam-7"}})
    assert cfg.topic_prefix == "edgeagent/cam-7"


def test_sections_compare_hash_print_and_refuse_changes_as_generated_dataclasses_do():
    """The sections take __init__, repr, == and hash from KeywordRecord (one shared copy instead
    of four methods compiled per class at every start): the results dataclasses' own would give."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class TlsConfig:  # the section as a plain frozen dataclass
        ca: str = ""
        cert: str = ""
        key: str = ""

    ours, plain = config.TlsConfig(ca="/etc/ca.pem"), TlsConfig(ca="/etc/ca.pem")
    assert repr(ours) == "TlsConfig(ca='/etc/ca.pem', cert='', key='')" and repr(plain).endswith("." + repr(ours))
    assert ours == config.TlsConfig(ca="/etc/ca.pem") and hash(ours) == hash(plain)
    assert ours != config.TlsConfig() and ours != plain  # another class is never equal, as generated
    assert config.Config() == config.Config() and config.Config() != config.from_dict({"mqtt": {"port": 1884}})
    with pytest.raises(TypeError):  # unhashable, as a generated hash over a list field is
        hash(config.Config())
    for change in (lambda s: setattr(s, "ca", "/tmp/x"), lambda s: delattr(s, "ca"), lambda s: setattr(s, "new", 1)):
        with pytest.raises(dataclasses.FrozenInstanceError) as theirs:
            change(plain)
        with pytest.raises(dataclasses.FrozenInstanceError, match=f"^{re.escape(str(theirs.value))}$"):
            change(ours)
    assert ours.ca == "/etc/ca.pem" and not hasattr(ours, "new")
    # frozen by KeywordRecord's own two methods: nothing compiled per section, a frozen dataclass all the same
    assert "__setattr__" not in vars(config.TlsConfig) and "__delattr__" not in vars(config.TlsConfig)
    assert dataclasses.is_dataclass(ours) and config.TlsConfig.__dataclass_params__.frozen
    assert dataclasses.replace(ours, key="/k") == config.TlsConfig(ca="/etc/ca.pem", key="/k")
    # and __init__ from KeywordRecord: by keyword, defaults, a fresh list from each default factory
    assert config.DeviceConfig().groups == [] and config.DeviceConfig().groups is not config.DeviceConfig().groups
    assert config.MqttConfig(port=1884).port == 1884 and config.MqttConfig().tls == config.TlsConfig()
    with pytest.raises(TypeError, match="unexpected keyword argument 'prot'"):
        config.MqttConfig(prot=1884)
