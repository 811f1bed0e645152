"""The one command-line convention of the study-side commands (aggregate, plan, wandb_tables),
the same as train's (Hydra): `key=value` arguments, `--help` for the usage. No torch here.

    options = cli.parse(argv, __doc__, {"results_dir": ("results", "where the records are")})
"""
from __future__ import annotations

import sys

from ..errors import UserError

HELP = ("-h", "--help")


def usage(doc: str, options: dict[str, tuple[str, str]], rest: str = "") -> str:
    width = max(len(k) for k in options) + len("=...")
    lines = [doc.strip(), "", "Options (key=value):"]
    lines += [f"  {k + '=...':{width}s}  {text}" + (f" (default: {default})" if default else "")
              for k, (default, text) in options.items()]
    return "\n".join(lines + ([f"  {rest}"] if rest else []))


def parse(argv: list[str], doc: str, options: dict[str, tuple[str, str]],
          rest: str = "") -> tuple[dict[str, str], list[str]]:
    """(options given or their defaults, other key=value arguments). `--help` prints the usage
    and exits 0; other arguments are refused with the valid keys unless `rest` says what they
    are (plan: Hydra overrides of the study's configs)."""
    if any(arg in HELP for arg in argv):
        print(usage(doc, options, rest))
        sys.exit(0)
    values = {k: default for k, (default, _) in options.items()}
    others = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in options:
            values[key] = value
        elif sep and rest and not key.startswith("-"):
            others.append(arg)
        else:
            raise UserError(f"unknown argument {arg!r}; use " +
                            " ".join(f"{k}=..." for k in options) + " (see --help)")
    return values, others


def flag(options: dict[str, str], key: str) -> bool:
    value = options[key].lower()
    if value not in ("true", "false"):
        raise UserError(f"{key} must be true or false, got {options[key]!r}")
    return value == "true"
