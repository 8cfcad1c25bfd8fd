"""The `samtok-rl` command: `samtok-rl {prepare,train,eval,add-mask-tokens,filter,inspect} ...`.

Each subcommand hands its remaining arguments to its module's `main(argv)`. Modules are imported only when their
subcommand runs, so `samtok-rl prepare` does not pay for importing the trainer (and a missing optional piece only
breaks the subcommand that needs it).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
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


def did_you_mean(name: str, known, prefix: str = "") -> str:
    """` (did you mean <prefix><field>?)` for the field of `known` closest to a misspelled `name`, else ''.

    Example:
    >>> did_you_mean("num_generation", ["num_generations", "beta"], prefix="--")
    ' (did you mean --num_generations?)'
    """
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def read_config(path: str, known) -> dict:
    """The `--config` file as TRL will read it, refused in one line where TRL would raise: a missing file, a YAML
    syntax error (line and column), a top level that is not a `field: value` mapping, a key that is no field.

    Args:
        path (`str`): the file given to `--config`.
        known: the field names the command takes (TRL's own `env:` mapping is allowed too).

    Returns:
        `dict`: the file's mapping.
    """
    if not Path(path).is_file():
        raise UsageError(f"--config {path!r}: {'is a folder' if Path(path).is_dir() else 'no such file'}")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: YAML syntax error: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: YAML error: {' '.join(str(err).split())}") from err
    if not isinstance(config, dict):
        got = "nothing" if config is None else f"a {type(config).__name__}"
        raise UsageError(f"{path}: the top level must be a mapping of field: value, got {got}")
    if not isinstance(config.get("env", {}), dict):
        raise UsageError(f"{path}: `env` must be a mapping of VARIABLE: value")
    unknown = [key for key in config if key != "env" and key not in known]
    if unknown:
        named = "; ".join(f"{key!r}{did_you_mean(str(key), known)}" for key in unknown)
        raise UsageError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {named}: not a field of this command")
    return config


class ConfigParser(TrlParser):
    """`TrlParser` reporting what the user got wrong as a `UsageError` (one line), where TRL and `HfArgumentParser`
    raise with a traceback: the `--config` file (`read_config`), a flag that is no field, and a value a config
    dataclass refuses in its `__post_init__` (TRL's `GRPOConfig` checks its batch arithmetic there, while parsing);
    argparse's own errors too, which it would print with the usage text.

    `check`, if given, sees the parsed values (an `argparse.Namespace` of every field) before any dataclass is built,
    to refuse them in samtok-rl's words first.
    """

    def __init__(self, *args, check: Callable[[argparse.Namespace], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.check = check

    def error(self, message: str):
        # argparse's own complaints (a value of the wrong type, a missing required field, an ambiguous
        # abbreviation) are the user's too: one line through `report_errors`, not usage text and exit.
        raise UsageError(message)

    def fields(self) -> list[str]:
        return [action.dest for action in self._actions if action.dest not in ("help", "config")]

    def parse_args_and_config(self, args=None, return_remaining_strings=False, **kwargs):
        args = list(sys.argv[1:] if args is None else args)
        # TRL looks for `--config FILE` only; `--config=FILE` would reach argparse as a field named config.
        args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
        if "--config" in args:
            at = args.index("--config")
            if at + 1 == len(args) or args[at + 1].startswith("--"):
                raise UsageError("--config needs a file: --config FILE.yaml")
            read_config(args[at + 1], self.fields())
        return super().parse_args_and_config(args, return_remaining_strings=return_remaining_strings, **kwargs)

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        # Called by TRL once the config file's values are the defaults: parse once to see every value, then build.
        namespace, remaining = self.parse_known_args(args=args)
        if remaining and not return_remaining_strings:
            raise UsageError(unknown_flags(remaining, self.fields()))
        if self.check is not None:
            self.check(namespace)
        try:
            return super().parse_args_into_dataclasses(
                args=args, return_remaining_strings=return_remaining_strings, **kwargs
            )
        except UsageError:
            raise
        except ValueError as err:
            # A dataclass's own check of a value (TRL's messages name the fields): one line, not a traceback.
            raise UsageError(" ".join(str(err).split())) from err


def unknown_flags(remaining: list[str], known) -> str:
    """The message for the arguments no field took: each unknown `--flag`, with the closest field name.

    Example:
    >>> unknown_flags(["--num_generation", "4"], ["num_generations"])
    'unknown flag --num_generation (did you mean --num_generations?)'
    """
    flags = [arg for arg in remaining if arg.startswith("-")]
    if not flags:
        return f"unexpected arguments {remaining}: give fields as --field value"
    named = []
    for flag in flags:
        name = flag.lstrip("-").split("=", 1)[0]
        named.append(f"--{name}{did_you_mean(name, known, prefix='--')}")
    return f"unknown flag{'s' if len(named) > 1 else ''} {', '.join(named)}"


def config_parser(
    dataclass_types, prog: str, description: str | None = None, check: Callable | None = None
) -> ConfigParser:
    """A `ConfigParser` over `dataclass_types` whose `--help` starts with `--config` (every command reads a YAML file).

    TRL's parser takes `--config FILE.yaml` out of the arguments itself (the file's keys are field names and set the
    defaults; flags override them) but never shows it: it is declared here for the help text only. `check` sees the
    parsed values before the dataclasses are built (`ConfigParser`).

    Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Args:
    ...     steps: int = 2
    >>> config_parser([Args], prog="samtok-rl demo").format_help().splitlines()[0]
    'usage: samtok-rl demo [--config FILE.yaml] [--field value ...]'
    """
    parser = ConfigParser(
        dataclass_types,
        prog=prog,
        description=description,
        usage=f"{prog} [--config FILE.yaml] [--field value ...]",
        check=check,
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
