"""`ctsvqa`: parse the line, run the command, and turn every error into one line and an exit code."""

from __future__ import annotations

import os
import sys
import traceback

import flows  # noqa: F401  (sets Prefect defaults before Prefect is imported)
from flows.cli.logs import quiet_console
from flows.cli.parser import GLOBAL_FLAGS, build_parser
from flows.cli.render import one_line


def main(argv: list[str] | None = None) -> int:
    """Errors end as one line on stderr: exit 2 for bad input or a bad environment (the message says
    which file, item or field and what to do), 1 for anything unexpected. The traceback is in the
    Prefect flow run's log, and on the terminal with `--debug`."""
    from tasks.judging import MissingKey
    from tasks.upstream_import import UpstreamFormatError
    from flows.server import ServerError
    from warehouse import WarehouseError

    argv = list(sys.argv[1:] if argv is None else argv)
    # global flags are accepted anywhere on the line
    argv = [a for a in argv if a in GLOBAL_FLAGS] + [a for a in argv if a not in GLOBAL_FLAGS]
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CTSVQA_DEBUG", "") not in ("", "0")
    try:
        with quiet_console(debug, args.verbose):
            return args.func(args)
    except BrokenPipeError:
        # the reader went away (`ctsvqa report | head`): no error to report; end as a shell's SIGPIPE would
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except (UpstreamFormatError, WarehouseError, MissingKey, ServerError, ValueError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"ctsvqa: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("ctsvqa: interrupted; what finished is stored: run the same command to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (a bug: still one line, the details on request)
        if debug:
            traceback.print_exc()
        print(f"ctsvqa: internal error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        if not debug:
            print("ctsvqa: run the same command with --debug for the traceback", file=sys.stderr)
        return 1
