"""Rewrite the vocabulary table in docs/cli.md from the code: python scripts/write_cli_vocabulary.py"""

from pathlib import Path

import typer

from dinotune.cli import app
from dinotune.cli_vocabulary import write_table

page = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
page.write_text(write_table(page.read_text(encoding="utf-8"), typer.main.get_command(app)), encoding="utf-8")
