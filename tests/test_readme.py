"""The README's Python API block runs as written, so it cannot rot."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_api_block_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Python API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out
    assert "parameters" in printed and "one run: best val accuracy" in printed
    assert (tmp_path / "runs" / "api" / "ledger.csv").is_file()
    assert printed.count(" done ") == 2  # both sweep values trained and recorded


def test_the_recipe_table_is_the_recipes_own():
    """The README's table of recipe settings is `fireablate recipes --markdown`, row for row: a
    change to a recipe that the README does not show fails here."""
    from fireablate.config import recipe_table

    header, *rows = recipe_table()
    text = README.read_text()
    for cells in [header, ["---"] * len(header), *rows]:
        assert f"| {' | '.join(cells)} |" in text, cells[0]
