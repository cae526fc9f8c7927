"""The ``memfail`` command line: a Typer app whose sub-commands live in other modules.

Add a command by adding one entry to ``COMMANDS``: a module with ``register(app)``, or
``"name=module:attr"`` for a Typer app (a command group) or a function (one command).
``main()`` turns bad input into one ``memfail: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from memfail.model.errors import ModelInputError
from memfail.scenario.errors import ScenarioError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
INPUT_ERRORS: tuple[type[Exception], ...] = (ScenarioError, ModelInputError)
COMMANDS = (
    "memfail.scenario.commands",            # run, scenarios
    "memfail.report.profiles",              # profiles
    "memfail.report.compare",               # compare, policies
    "memfail.report.kernel_users",          # kernel-users
    "check=memfail.check.cli:check",        # check
    "fleet=memfail.fleet.cli:fleet_app",    # fleet (a command group)
    "replay=memfail.replay.cli:replay",     # replay
)

app = typer.Typer(
    name="memfail",
    help="An executable model of Linux memory-failure (hwpoison) handling. "
         "Exit status: 0 ok, 1 an expectation failed, 2 bad input, 3 internal error.",
    epilog="Example: memfail run anon-madvise-hwpoison",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def register(target: typer.Typer, entry: str) -> None:
    """Add the command(s) one ``COMMANDS`` entry names to ``target``."""
    name, _, ref = entry.rpartition("=")
    module, _, attr = ref.partition(":")
    mod = importlib.import_module(module)
    if not attr:
        mod.register(target)
        return
    obj = getattr(mod, attr)
    if isinstance(obj, typer.Typer):
        target.add_typer(obj, name=name or None)
    else:
        target.command(name or None)(obj)


def register_all(target: typer.Typer = app) -> None:
    for entry in COMMANDS:
        register(target, entry)


register_all()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map every error to an exit status, never a traceback."""
    try:
        rv = app(args=argv, prog_name="memfail", standalone_mode=False)
        return rv if isinstance(rv, int) else EXIT_OK
    except INPUT_ERRORS as e:
        print(f"memfail: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("memfail: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        show = getattr(e, "show", None)
        if callable(show) and isinstance(getattr(e, "exit_code", None), int):
            show()  # a usage error: unknown option, missing argument
            return int(e.exit_code)  # type: ignore[attr-defined]
        if os.environ.get("MEMFAIL_TRACEBACK"):
            raise
        print(f"memfail: error: internal error: {type(e).__name__}: {e}; this is a bug in "
              "memfail, rerun with MEMFAIL_TRACEBACK=1 and report the traceback",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
