"""The README must stay true of the code: its commands exist, its configuration table is whole."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from pipelines import prefect_api
from pipelines import settings as pipelines_settings
from pipelines.cli import app
from serving.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_server_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        assert f"`NEUROSERVE_{name.upper()}" in README, f"NEUROSERVE_{name.upper()} undocumented"


def test_every_documented_variable_is_a_setting() -> None:
    fields = {f"NEUROSERVE_{name.upper()}" for name in Settings.model_fields}
    others = {
        "NEUROSERVE_HOME",
        "NEUROSERVE_CODE_DIR",
        pipelines_settings.ENV_RETRIES,
        pipelines_settings.ENV_RETRY_DELAY,
        prefect_api.ENV_MODE,
    }
    for var in set(re.findall(r"NEUROSERVE_[A-Z_]+[A-Z]", README)):
        assert var in fields | others, f"README documents {var}, which nothing reads"


def test_every_documented_command_exists() -> None:
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for command in set(re.findall(r"^neuroserve ([a-z]+)", README, flags=re.MULTILINE)):
        assert command in commands, f"README shows `neuroserve {command}`, which does not exist"


def test_the_two_setup_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE)
    assert "make test" in (ROOT / ".ci/run").read_text()
