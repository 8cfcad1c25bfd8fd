"""The `samtok-rl` command: `samtok-rl {prepare,train,eval,add-mask-tokens,filter,inspect} ...`.

Each subcommand hands its remaining arguments to its module's `main(argv)`. Modules are imported only when their
subcommand runs, so `samtok-rl prepare` does not pay for importing the trainer (and a missing optional piece only
breaks the subcommand that needs it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from trl import TrlParser

from samtok_rl.errors import UsageError


# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "prepare": ("samtok_rl.prepare", "tokenize GT masks and write an RL dataset (gRefCOCO / GranD-f)"),
    "train": ("samtok_rl.grpo", "GRPO training (TRL) from a recipe"),
    "eval": ("samtok_rl.evaluate", "GRES / GCG evaluation"),
    "add-mask-tokens": ("samtok_rl.add_tokens", "add the 514 mask tokens to a base VLM (once, before training)"),
    "filter": ("samtok_rl.filter", "score each prompt with the start model; drop those without reward spread"),
    "inspect": ("samtok_rl.inspector", "HTML report of a training run or an eval folder, masks drawn on the images"),
}


def config_parser(dataclass_types, prog: str, description: str | None = None) -> TrlParser:
    """A `TrlParser` over `dataclass_types` whose `--help` starts with `--config` (every command reads a YAML file).

    TRL's parser takes `--config FILE.yaml` out of the arguments itself (the file's keys are field names and set the
    defaults; flags override them) but never shows it: it is declared here for the help text only.

    Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Args:
    ...     steps: int = 2
    >>> config_parser([Args], prog="samtok-rl demo").format_help().splitlines()[0]
    'usage: samtok-rl demo [--config FILE.yaml] [--field value ...]'
    """
    parser = TrlParser(
        dataclass_types, prog=prog, description=description, usage=f"{prog} [--config FILE.yaml] [--field value ...]"
    )
    action = parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,  # never parsed here (TrlParser consumes it), so no extra namespace comes back
        help="YAML file whose keys are the fields below (flags given after it override it)",
    )
    # Listed first, right after -h: a command's recipe is the first thing to look for.
    options = parser._optionals._group_actions
    options.remove(action)
    options.insert(1, action)
    return parser


def _usage() -> str:
    lines = [
        "usage: samtok-rl {prepare,train,eval,add-mask-tokens,filter,inspect} [--config FILE.yaml] [args...]",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<16} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run `samtok-rl <subcommand> --help` for its options. Errors in what you give are reported in one line;",
              "`--debug` (or SAMTOK_RL_DEBUG=1) shows their traceback."]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `samtok-rl <subcommand> [args...]` to `<module>.main(args)`.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments after the program name; defaults to `sys.argv[1:]`.

    Returns:
        `int`: the process exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"samtok-rl: unknown subcommand {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only the subcommand's own module being absent gets the friendly message; a missing dependency inside it
        # is a real error and keeps its traceback.
        if err.name != module_name:
            raise
        print(f"samtok-rl {command}: {module_name} is not available in this installation ({err})", file=sys.stderr)
        return 1
    return report_errors(command, module.main, rest)


def report_errors(command: str, entry, argv: Sequence[str] | None = None) -> int:
    """Call `entry(argv)` and report a `UsageError` as one line (`samtok-rl <command>: error: …`), exit status 2.

    `--debug` in `argv` or `SAMTOK_RL_DEBUG=1` lets the error (and its traceback) through; any other exception is a
    bug and keeps its traceback. The modules' `python -m` entry points use it too (`accelerate launch -m …`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SAMTOK_RL_DEBUG", "") not in ("", "0")
    try:
        entry([arg for arg in argv if arg != "--debug"])
    except UsageError as err:
        if debug:
            raise
        # A problem with the user's input: one line, no traceback (bugs keep theirs).
        print(f"samtok-rl {command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
