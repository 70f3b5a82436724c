"""Shared rich consoles and the one-line error format the CLI uses everywhere."""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class CLIError(Exception):
    """An error shown to the user as one line (plus an optional hint), exit code 1."""

    def __init__(self, message: str, hint: Optional[str] = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def print_error(message: str, hint: Optional[str] = None) -> None:
    err_console.print(f"[red]Error:[/] {escape(message)}")
    if hint:
        err_console.print(f"[dim]Hint: {escape(hint)}[/]")


def properties_table(rows: Iterable[Tuple[str, str]]) -> Table:
    table = Table(box=None, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column()
    for label, value in rows:
        table.add_row(f"[bold]{escape(label)}[/bold]", escape(value))
    return table
