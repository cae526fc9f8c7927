"""``memfail kernel-users``: the kernel's users of guest memory, each with its poison check, its
copy, what a consumption does, and the kernel function the entry was read from."""

from __future__ import annotations

import json
import shutil
from typing import Annotated, Any

import typer

from memfail.model.kernel.kaccess import KERNEL_USER_BY_NAME, KERNEL_USERS, profile_release
from memfail.model.kernel.profiles import PROFILES
from memfail.scenario.errors import ScenarioError

EPILOG = """
Examples:

  memfail kernel-users

  memfail kernel-users --profile linux-6.1

  memfail kernel-users --user hibernate

  memfail kernel-users --json
"""

CHECK_WORDS = {"flag": "PG_hwpoison (page or folio)", "raw-flag": "PG_hwpoison (raw page)",
               "entry": "hwpoison entry", "none": "no"}


def kernel_users_document(profile: str | None = None, user: str | None = None
                          ) -> dict[str, Any]:
    """Every entry of the inventory as JSON; ``mc_safe`` is for ``profile`` (newest if None)."""
    if profile is not None and profile not in PROFILES:
        raise ScenarioError("--profile", None, None,
                            f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    if user is not None and user not in KERNEL_USER_BY_NAME:
        raise ScenarioError("--user", None, None,
                            f"unknown kernel user {user!r}; known: "
                            f"{', '.join(KERNEL_USER_BY_NAME)}")
    release = profile_release(profile) if profile else None
    rows = []
    for u in KERNEL_USERS:
        if user is not None and u.name != user:
            continue
        d = u.as_dict()
        d["mc_safe"] = u.mc_safe(release)
        rows.append(d)
    return {"profile": profile or "newest", "users": rows}


def kernel_users(
    profile: Annotated[str | None, typer.Option(
        "--profile", help="Say whether each copy is machine-check safe on this kernel profile "
                          "(default: the newest).")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", help="Show one kernel user with its full citations.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")
                        ] = False,
) -> None:
    """List the kernel's users of guest memory: does it check for poison first, is its copy
    machine-check safe, what does consuming poison do (docs/kernel-users.md)."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    doc = kernel_users_document(profile, user)
    if json_out:
        typer.echo(json.dumps(doc, indent=2))
        return
    console = Console(soft_wrap=False, width=max(100, shutil.get_terminal_size((160, 24)).columns))
    if user is not None:
        for k, v in doc["users"][0].items():
            console.print(f"[bold]{k}[/bold]: {escape(str(v))}", highlight=False)
        return
    t = Table(title=f"kernel users of guest memory (copies on {doc['profile']})", box=box.SIMPLE)
    for col in ("user", "checks", "mc-safe copy", "guest_memfd", "if it consumes poison",
                "read in"):
        t.add_column(col, no_wrap=col in ("user", "mc-safe copy"))
    for d in doc["users"]:
        mark = "" if d["modelled"] else " *"
        safe = "no CPU load" if not d["loads"] else "yes" if d["mc_safe"] else "no"
        if d["mc_safe_since"] and d["loads"]:
            safe += f" (since {d['mc_safe_since']})"
        derived = f" [derived: {', '.join(d['derived'])}]" if d["derived"] else ""
        t.add_row(*(escape(x) for x in (d["name"] + mark, CHECK_WORDS[d["check"]], safe,
                                         d["gmem"].split(":")[0], d["consumed"],
                                         d["source"] + derived)))
    console.print(t)
    console.print("* listed only: not a kernel_access user of the model", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("kernel-users", epilog=EPILOG)(kernel_users)


BEGIN, END = "<!-- BEGIN KERNEL-USERS -->", "<!-- END KERNEL-USERS -->"


def markdown_table() -> str:
    """The inventory as the Markdown table of docs/kernel-users.md."""
    lines = ["| user | checks poison first | machine-check-safe copy (newest) | reaches "
             "guest_memfd | if it consumes poison | read in | derived |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for u in KERNEL_USERS:
        safe = "no CPU load" if not u.loads else "yes" if u.mc_safe() else "no"
        if u.mc_since and u.loads:
            safe += f" since {u.mc_since[0]}.{u.mc_since[1]}"
        name = f"`{u.name}`" if u.modelled else f"{u.name} (listed)"
        cells = [name, CHECK_WORDS[u.check], safe, u.gmem, u.consumed, u.source,
                 ", ".join(u.derived) or "-"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "### What each entry was read from", ""]
    for u in KERNEL_USERS:
        lines.append(f"* **{u.name}** ({u.title}). Check: {u.check_cite}. Copy: {u.copy_cite}."
                     + (f" Before {u.mc_since[0]}.{u.mc_since[1]}: {u.before}."
                        if u.before and u.mc_since else ""))
    return "\n".join(lines)


def update_doc(path: str) -> bool:
    """Rewrite the table between the markers of ``path``; True if it changed."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(f"{arg}: {'updated' if update_doc(arg) else 'up to date'}")
