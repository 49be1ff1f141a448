"""The `ctsvqa` command line: a small entry point (entry.py), the parser (parser.py), one module per
command group (data, models, judging, results, admin), and what they print (render.py) and how
Prefect's log shows (logs.py). Heavy imports (Prefect) happen inside the commands that need them, so
`ctsvqa report` answers in well under a second."""

from flows.cli.entry import main
from flows.cli.parser import build_parser

__all__ = ["build_parser", "main"]
