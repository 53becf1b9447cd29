"""`python -m monitor` is the `monitor` command."""

from monitor.cli import app

app(prog_name="monitor")
