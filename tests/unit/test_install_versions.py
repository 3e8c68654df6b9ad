"""The start-up axolotl version check (adapters/axolotl/versions.py): tested releases pass
silently, an untested one gets one warning naming the tested ones, one below the
requirement is refused with an error naming both versions. Checked on version strings and
through the plugin's real `register` (the hook every axolotl command passes), with the
version axolotl's distribution reports replaced."""

from __future__ import annotations

import importlib.metadata

import pytest
import yaml
from axolotl.utils.dict import DictDefault
from axolotl_run import MASKTHOUGHT_PLUGIN, logged_records, reset_plugins

from axolotl_maskthought import MaskThoughtPlugin
from axolotl_maskthought.adapters.axolotl import versions
from axolotl_maskthought.adapters.axolotl.versions import UnsupportedAxolotlError, check_axolotl_version

TESTED = ["0.19.0", "0.19.3", "0.21.0", "0.21.2.post1"]
UNTESTED = ["0.20.0", "0.20.1", "0.22.0", "0.23.1", "1.0.0"]
TOO_OLD = ["0.18.0", "0.18.9", "0.10.0", "0.9.2", "0.19.0rc1"]


@pytest.mark.parametrize("installed", TESTED)
def test_tested_release_passes_silently(installed):
    assert check_axolotl_version(installed) is None


@pytest.mark.parametrize("installed", UNTESTED)
def test_untested_release_gets_a_warning_naming_the_tested_ones(installed):
    message = check_axolotl_version(installed)
    assert message is not None
    assert f"axolotl {installed} has not been tested" in message
    assert "0.19.x, 0.21.x" in message


@pytest.mark.parametrize("installed", TOO_OLD)
def test_release_below_the_requirement_is_an_error_naming_both_versions(installed):
    with pytest.raises(UnsupportedAxolotlError, match=rf"axolotl {installed} is installed.*requires axolotl>=0\.19\.0"):
        check_axolotl_version(installed)


def test_garbage_version_is_an_error():
    with pytest.raises(UnsupportedAxolotlError, match="not a version string"):
        check_axolotl_version("unknown")


@pytest.fixture
def fake_axolotl_version(monkeypatch):
    """Make `importlib.metadata.version("axolotl")` answer a given string; a fresh once-per-process memory."""
    real = importlib.metadata.version
    monkeypatch.setattr(versions, "_warned", set())

    def install(answer: str) -> None:
        monkeypatch.setattr(importlib.metadata, "version", lambda name: answer if name == "axolotl" else real(name))

    return install


def _register(times: int = 1) -> list[str]:
    """Run the plugin's `register` on a plain config; the plugin's warnings."""
    cfg = DictDefault({"base_model": "unused", "plugins": [MASKTHOUGHT_PLUGIN]})
    with logged_records("axolotl.maskthought") as records:
        for _ in range(times):
            MaskThoughtPlugin().register(cfg)
    return [record.getMessage() for record in records if record.levelname == "WARNING"]


def test_register_is_silent_on_the_installed_tested_axolotl(monkeypatch):
    monkeypatch.setattr(versions, "_warned", set())
    assert importlib.metadata.version("axolotl") in versions.TESTED_AXOLOTL  # CI runs on a tested stack
    assert _register() == []


@pytest.mark.parametrize("installed", ["0.19.2", "0.21.1"])
def test_register_is_silent_on_a_tested_series(fake_axolotl_version, installed):
    fake_axolotl_version(installed)
    assert _register() == []


@pytest.mark.parametrize("installed", ["0.20.0", "0.22.0"])
def test_register_warns_once_on_an_untested_axolotl(fake_axolotl_version, installed):
    fake_axolotl_version(installed)
    warnings = _register(times=3)  # axolotl registers the plugin more than once per run
    assert len(warnings) == 1, warnings
    assert f"axolotl {installed} has not been tested" in warnings[0]
    assert "tested with 0.19.x, 0.21.x" in warnings[0]


def test_register_refuses_an_axolotl_below_the_requirement(fake_axolotl_version):
    fake_axolotl_version("0.18.0")
    with pytest.raises(UnsupportedAxolotlError, match=r"axolotl 0\.18\.0 is installed.*requires axolotl>=0\.19\.0"):
        _register()


def test_axolotl_load_cfg_refuses_an_axolotl_below_the_requirement(fake_axolotl_version, tmp_path):
    """axolotl's own config loading (what `axolotl train` and the other commands run first)
    stops with the error, before any model or data is read."""
    from axolotl.cli.config import load_cfg

    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tmp_path / "no-model-here"),
                "plugins": [MASKTHOUGHT_PLUGIN],
                "datasets": [{"path": str(tmp_path / "no-data.jsonl"), "type": "alpaca"}],
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    fake_axolotl_version("0.18.0")
    reset_plugins()
    try:
        with pytest.raises(UnsupportedAxolotlError, match=r"axolotl 0\.18\.0 is installed"):
            load_cfg(str(config))
    finally:
        reset_plugins()
