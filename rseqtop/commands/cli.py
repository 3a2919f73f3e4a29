"""Command-line entry point: `rseqtop [COMMAND] [options]`.

Each command lives in its own module with `configure(parser)` and
`run(args) -> int`; only the chosen one is imported, so start-up stays fast
and a broken optional front end cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from rseqtop import __version__
from rseqtop.errors import UserError

# name -> (module, one-line summary). `top` is what a bare `rseqtop` runs.
COMMANDS = {
    "top": ("rseqtop.commands.top", "live view of rseq aborts (the default command)"),
    "trace": ("rseqtop.commands.trace", "one line per rseq abort as it happens (--events: a per-thread timeline)"),
    "annotate": ("rseqtop.commands.annotate", "a critical section's instructions, source lines and where it aborts"),
    "export": ("rseqtop.commands.export", "serve Prometheus metrics"),
    "record": ("rseqtop.commands.record", "record snapshots over time to a file for 'rseqtop report'"),
    "report": ("rseqtop.commands.report", "turn a recording into one self-contained HTML page"),
    "demo": ("rseqtop.commands.demo", "run the bundled workload and open the live view on it"),
    "workload": ("rseqtop.workload", "run the bundled rseq workload (ground truth)"),
    "doctor": ("rseqtop.commands.doctor", "check that this machine can run rseqtop"),
}
DEFAULT_COMMAND = "top"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage mistakes on one line and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (try '{self.prog} --help')\n")
        raise SystemExit(2)


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "commands:\n" + "\n".join(lines)


def _split_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    if argv and argv[0] in COMMANDS:
        return argv[0], list(argv[1:])
    if argv and not argv[0].startswith("-") and not _is_number(argv[0]):
        names = ", ".join(COMMANDS)
        sys.stderr.write(f"rseqtop: error: unknown command '{argv[0]}' (commands: {names})\n")
        raise SystemExit(2)
    return DEFAULT_COMMAND, list(argv)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_parser(command: str) -> argparse.ArgumentParser:
    module_name, summary = COMMANDS[command]
    module = importlib.import_module(module_name)
    prog = "rseqtop" if command == DEFAULT_COMMAND else f"rseqtop {command}"
    parser = OneLineParser(
        prog=prog,
        description=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(getattr(module, "EPILOG", "") + ("\n\n" + _top_help() if command == DEFAULT_COMMAND else "")).strip(),
    )
    parser.add_argument("--version", action="version", version=f"rseqtop {__version__}")
    module.configure(parser)
    parser.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = _split_command(argv)
    try:
        module = importlib.import_module(COMMANDS[command][0])
        # A command that owns its argument parsing (the workload binary does)
        # gets its arguments untouched.
        if hasattr(module, "main_argv"):
            return int(module.main_argv(rest) or 0)
        args = build_parser(command).parse_args(rest)
        return int(args._run(args) or 0)
    except UserError as err:
        sys.stderr.write(f"rseqtop: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `rseqtop -b | head`: the reader went away; that is not an error.
        sys.stderr.close()
        return 0
