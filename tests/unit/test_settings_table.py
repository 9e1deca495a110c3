"""The README's configuration table is the one generated from the settings, and complete."""

from __future__ import annotations

from pathlib import Path

from controllers.settings import README_END, README_START, env_table, render_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_matches_the_settings() -> None:
    text = README.read_text()
    assert README_START in text
    assert README_END in text
    assert render_readme(text) == text, "run `make settings-table`"


def test_every_variable_is_in_the_table_once() -> None:
    block = README.read_text().split(README_START, 1)[1].split(README_END, 1)[0]
    variables = [row[0] for row in env_table()]
    assert len(variables) == len(set(variables))
    for variable in variables:
        assert block.count(f"| `{variable}` |") == 1, variable
