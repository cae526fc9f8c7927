"""The ``memfail`` command line: a Typer app whose sub-commands live in other modules.

Add a command by adding one entry to ``COMMANDS``: the names of the commands it provides with
their one-line help, and a module with ``register(app)`` or ``"name=module:attr"`` for a Typer
app (a command group) or a function (one command). A command's module is imported only when the
command runs (``memfail --help`` stays fast). ``main()`` turns every error into one
``memfail: error: ...`` line and an exit status:

* 0 ok; 1 an expectation or a checked property failed; 2 bad input or usage (one line,
  ``FILE:LINE: FIELD: message`` for a file); 3 internal error (a bug in memfail).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup, TyperOption

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_STATUS_HELP = ("Exit status: 0 ok, 1 an expectation or checked property failed, "
                    "2 bad input or usage (one `memfail: error:` line), 3 internal error.")
COMMANDS: tuple[tuple[dict[str, str], str], ...] = (
    ({"run": "Run scenarios and check their expectations.",
      "scenarios": "List the built-in scenarios."}, "memfail.scenario.commands"),
    ({"profiles": "Kernel profiles: behaviour switches and what changed between two."},
     "memfail.report.profiles"),
    ({"compare": "Every built-in vm-* scenario under every guest_memfd policy.",
      "policies": "The guest_memfd memory-failure policies, their knobs and call items."},
     "memfail.report.compare"),
    ({"kernel-users": "The kernel's users of guest memory: poison check, copy, consequence."},
     "memfail.report.kernel_users"),
    ({"check": "Explore every interleaving of bounded events under each policy."},
     "check=memfail.check.cli:check"),
    ({"search": "The cheapest policies that keep the call's properties, over all knobs."},
     "search=memfail.search.cli:search"),
    ({"fleet": "What each memory-failure policy costs a fleet (run, sweep)."},
     "fleet=memfail.fleet.cli:fleet_app"),
    ({"replay": "Real RAS logs in: what happened, and what each policy would have done."},
     "replay=memfail.replay.cli:replay"),
    ({"report": "The call's questions answered in one HTML page, with the evidence."},
     "memfail.report.html.cli"),
    ({"conform": "Run scenarios on a real kernel under QEMU and compare with the model.",
      "selftest": "Write a scenario as a kernel selftest (kselftest harness) in C."},
     "memfail.conform.cli"),
)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("memfail")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


class _LazyGroup(TyperGroup):
    """The top-level group: a command's module is imported the first time it is needed."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [name for names, _ in COMMANDS for name in names] + \
            [n for n in super().list_commands(ctx) if not _provider(n)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = _provider(cmd_name)
        if entry is not None and cmd_name not in self.commands:
            sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            sub.callback()(lambda: None)  # a group, so every command keeps its own name
            register(sub, entry)
            group = typer.main.get_command(sub)
            for name, cmd in group.commands.items():  # type: ignore[attr-defined]
                self.commands.setdefault(name, cmd)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, help_) for names, _ in COMMANDS for name, help_ in names.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """A flag takes no value: show no type beside it (typer's rich help writes ``--json
    <bool>``, which reads as ``--json true``, a scenario file named true)."""
    if self.is_flag and not self.count:
        return None
    return _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def _provider(name: str) -> str | None:
    return next((entry for names, entry in COMMANDS if name in names), None)


app = typer.Typer(
    cls=_LazyGroup,
    name="memfail",
    help="An executable model of Linux memory-failure (hwpoison) handling. " + EXIT_STATUS_HELP,
    epilog="Example: memfail run anon-madvise-hwpoison",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"memfail {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_show_version,
        is_eager=True)] = False) -> None:
    """An executable model of Linux memory-failure (hwpoison) handling."""


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


def register_all(target: typer.Typer) -> None:
    """Register every command eagerly (for documentation generators and tests)."""
    for _, entry in COMMANDS:
        register(target, entry)


def _input_errors() -> tuple[type[Exception], ...]:
    from memfail.fleet.params import FleetError
    from memfail.inputs import InputError
    from memfail.model.errors import ModelInputError

    return (InputError, ModelInputError, FleetError)


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _stdout_is_devnull() -> bool:
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError, AttributeError):
        return False


def error_line(message: str) -> str:
    """``memfail: error: MESSAGE`` on one line."""
    return "memfail: error: " + " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map every error to an exit status, never a traceback."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    from typer.exceptions import Abort

    try:
        rv = app(args=argv, prog_name="memfail", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return rv if isinstance(rv, int) else EXIT_OK
    except BrokenPipeError:
        _quiet_stdout()  # `memfail compare | head`: the reader has what it wanted
        return EXIT_OK
    except SystemExit as e:
        # rich's own closed-pipe exit points stdout at /dev/null and raises SystemExit(1);
        # click's turns an EPIPE OSError into sys.exit(1) from inside its handler
        ctx = e.__context__
        if _stdout_is_devnull() or (isinstance(ctx, OSError) and ctx.errno == errno.EPIPE):
            _quiet_stdout()
            return EXIT_OK
        raise
    except (KeyboardInterrupt, Abort):
        print("memfail: error: interrupted", file=sys.stderr)
        return 130
    except NoArgsIsHelpError as e:
        if e.ctx is not None:
            typer.echo(e.ctx.get_help())
        return EXIT_OK
    except UsageError as e:
        cmd = e.ctx.command_path if e.ctx is not None else "memfail"
        print(error_line(f"{e.format_message()} (usage: `{cmd} --help`)"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except ClickException as e:
        print(error_line(e.format_message()), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if isinstance(e, _input_errors()):
            print(error_line(str(e)), file=sys.stderr)
            return EXIT_BAD_INPUT
        if os.environ.get("MEMFAIL_TRACEBACK"):
            raise
        print(error_line(f"internal error: {type(e).__name__}: {e}; this is a bug in "
                         "memfail, rerun with MEMFAIL_TRACEBACK=1 and report the traceback"),
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
