import subprocess
import sys

import pytest

from rseqtop.commands import cli


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rseqtop", *args], capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.parametrize("argv", [["nosuchcommand"], ["doctor", "--bogus"], ["--no-such-flag"], ["doctor", "extra"]])
def test_usage_errors_are_one_line_and_exit_2(argv):
    out = run_cli(*argv)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "error" in lines[0] and "Traceback" not in out.stderr


def test_unknown_command_names_the_commands():
    out = run_cli("frobnicate")
    assert "unknown command 'frobnicate'" in out.stderr
    for name in cli.COMMANDS:
        assert name in out.stderr


def test_version_and_help():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("rseqtop ")
    out = run_cli("doctor", "--help")
    assert out.returncode == 0 and "--json" in out.stdout


def test_every_command_module_has_the_cli_contract():
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        mod = importlib.import_module(module)
        assert hasattr(mod, "main_argv") or (hasattr(mod, "configure") and hasattr(mod, "run")), name


def test_split_command_defaults_to_top():
    assert cli._split_command(["-p", "1"]) == ("top", ["-p", "1"])
    assert cli._split_command(["1", "5"]) == ("top", ["1", "5"])
    assert cli._split_command(["doctor", "--json"]) == ("doctor", ["--json"])


def test_export_takes_a_pid_list_like_top_and_trace():
    import argparse

    from rseqtop.commands import export as export_cmd
    from rseqtop.commands import top as top_cmd
    from rseqtop.commands import trace as trace_cmd
    from rseqtop.commands.options import flat_pids

    for mod in (export_cmd, top_cmd, trace_cmd):
        parser = argparse.ArgumentParser()
        mod.configure(parser)
        args = parser.parse_args(["-p", "12,34", "-p", "56"])
        assert flat_pids(args) == [12, 34, 56], mod.__name__


def imports_of(path) -> set:
    import ast

    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            imported.add(n.module)
            imported |= {f"{n.module}.{a.name}" for a in n.names}
    return imported


def test_commands_import_no_other_command_and_nothing_imports_them():
    """Shared options live in rseqtop.commands.options, the shared poll loop
    in rseqtop.commands.polling; a command module
    imports no other command module, and no other part of rseqtop imports
    the commands (they wire the parts, like ebpf_exporter's cmd/)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "rseqtop"
    commands = {p.stem for p in (root / "commands").glob("*.py")} - {"__init__", "cli", "options", "polling"}
    assert {"top", "trace", "export", "demo", "doctor", "record", "report"} <= commands
    for name in commands:
        others = {m for m in imports_of(root / "commands" / f"{name}.py")
                  if m.startswith("rseqtop.commands.") and m.split(".")[2] in commands - {name}}
        assert not others, (name, others)
    for path in root.rglob("*.py"):
        if "commands" in path.relative_to(root).parts or path.name == "__main__.py":
            continue
        assert not {m for m in imports_of(path) if m.startswith("rseqtop.commands")}, path


def test_uprobes_is_opt_in_on_top_export_and_trace():
    import argparse

    from rseqtop.commands import export as export_cmd
    from rseqtop.commands import top as top_cmd
    from rseqtop.commands import trace as trace_cmd

    for mod in (top_cmd, export_cmd, trace_cmd):
        parser = argparse.ArgumentParser()
        mod.configure(parser)
        assert parser.parse_args([]).uprobes is False, mod.__name__
        assert parser.parse_args(["--uprobes"]).uprobes is True, mod.__name__


def test_uprobes_without_a_known_signature_is_a_user_error():
    from rseqtop.collect.uprobes import HandlerProbes
    from rseqtop.errors import UserError

    with pytest.raises(UserError, match="RSEQ_SIG"):
        HandlerProbes(lambda path, offset: None, sig=None)
