"""``python -m natten_ext.compat [--natten-version V] (script.py | -m module) [args...]``.

Runs the script (its folder first on ``sys.path``, as ``python script.py`` does) or the module as
``__main__`` with the drop-in installed as ``natten``; the arguments after it are its own.
"""

from __future__ import annotations

import os
import runpy
import sys

from . import DEFAULT_VERSION, install

USAGE = (
    "usage: python -m natten_ext.compat [--natten-version V] (script.py | -m module) [args...]\n"
    f"Runs old NATTEN code (0.14-0.17 API) on natten_ext; V defaults to {DEFAULT_VERSION}."
)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    version, module = DEFAULT_VERSION, None
    while argv and argv[0].startswith("-"):
        option = argv.pop(0)
        if option in ("-h", "--help"):
            print(USAGE)
            return
        if option.startswith("--natten-version="):
            version = option.partition("=")[2]
        elif option == "--natten-version" and argv:
            version = argv.pop(0)
        elif option == "-m" and argv:
            module = argv.pop(0)
            break
        else:
            raise SystemExit(f"unknown or incomplete option {option!r}\n{USAGE}")
    if module is None and not argv:
        raise SystemExit(f"give a script or -m module\n{USAGE}")
    install(version)
    if module is not None:
        sys.argv = [module, *argv]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = argv[0]
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
