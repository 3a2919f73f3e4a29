import subprocess
import sys

import pytest

from rseqtop import cli


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

    from rseqtop import export_cmd, top_cmd, trace_cmd
    from rseqtop.options import flat_pids

    for mod in (export_cmd, top_cmd, trace_cmd):
        parser = argparse.ArgumentParser()
        mod.configure(parser)
        args = parser.parse_args(["-p", "12,34", "-p", "56"])
        assert flat_pids(args) == [12, 34, 56], mod.__name__


def test_commands_import_no_other_command():
    """Shared options live in rseqtop.options; a command module imports no
    other command module (the CLI wires them, like ebpf_exporter's cmd/)."""
    import ast
    from pathlib import Path

    commands = {"top_cmd", "trace_cmd", "export_cmd", "demo", "doctor"}  # (workload.py is a library too)
    root = Path(__file__).resolve().parent.parent / "rseqtop"
    for name in commands:
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module:
                imported.add(n.module)
                imported |= {f"{n.module}.{a.name}" for a in n.names}
        others = {m for m in imported if m.startswith("rseqtop.") and m.split(".")[1] in commands - {name}}
        assert not others, (name, others)
