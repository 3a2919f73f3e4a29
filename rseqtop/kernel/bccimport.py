"""Import the distribution's bcc (python3-bpfcc), with headers set up first.

Only the collector and the doctor call this: importing bcc loads libbcc, which
is slow and needs root-ish privileges to be useful.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rseqtop.errors import UserError
from rseqtop.kernel import kheaders

DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
# Newer kernels' headers use attributes that bcc's clang ignores
# ('nocf_check' without -fcf-protection): harmless warnings on every compile.
CFLAGS = ["-Wno-ignored-attributes"]
INSTALL_HINT = "install the distribution's bcc: apt-get install python3-bpfcc (not the PyPI package 'bcc'); see 'rseqtop doctor'"


def import_bcc():
    try:
        import bcc  # noqa: F401
    except ImportError:
        # A venv made without --system-site-packages cannot see Debian's bcc;
        # its pure-Python module works from any CPython 3 of the same ABI.
        if (DIST_PACKAGES / "bcc").is_dir() and str(DIST_PACKAGES) not in sys.path:
            sys.path.append(str(DIST_PACKAGES))
        try:
            import bcc  # noqa: F401
        except ImportError:
            raise UserError(f"bcc is not importable; {INSTALL_HINT}") from None
        except OSError as err:
            raise UserError(f"bcc is installed but libbcc failed to load ({err}); {INSTALL_HINT}") from None
    except OSError as err:
        raise UserError(f"bcc is installed but libbcc failed to load ({err}); {INSTALL_HINT}") from None
    import bcc

    return bcc


def prepare_headers() -> kheaders.HeaderSource:
    source = kheaders.locate()
    if source.kind == "missing":
        raise UserError(f"no kernel headers for bcc: {kheaders.fix_hint()}; see 'rseqtop doctor'")
    kheaders.export_for_bcc(source)
    return source


def libbcc_path() -> str:
    bcc = import_bcc()
    lib = getattr(getattr(bcc, "libbcc", None), "lib", None)
    name = getattr(lib, "_name", "libbcc.so.0")
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            if "libbcc" in line and "/" in line:
                return line[line.index("/"):]
    except OSError:
        pass
    return name
