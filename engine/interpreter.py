"""The Python interpreter of this process as a program that can be started: for pip (the plugin's
dependency installer) and for Dask's local worker processes.

Inside QGIS ``sys.executable`` is not to be trusted: it can be the QGIS binary (Windows, macOS) or
whatever ``python3`` came first on PATH when the embedded interpreter worked it out (a pyenv shim,
say, whose Python lacks QGIS's packages and even some of its own). So the candidates are looked for
where this interpreter's own installation keeps its program, and each one is started once to check
that it is this Python: the same version and the same ``sys.prefix`` (so the same site-packages, a
virtual environment's included). No qgis import here.

- Linux and other POSIX: ``<sys.prefix>/bin/python3.X`` and ``python3``, then sys._base_executable.
- Windows (OSGeo4W, the standalone installer): ``<sys.prefix>/python.exe`` (``apps/Python3x``), then
  ``<QGIS prefix>/bin/python3.exe`` and ``python.exe``.
- macOS (QGIS.app): ``Contents/MacOS/bin/python3`` inside the app bundle, then the POSIX places.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys

PROBE = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.prefix)"
PROBE_SECONDS = 20


def same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def app_bundle(path: str) -> str | None:
    """The ``*.app`` folder that holds ``path`` (macOS), or None."""
    path = os.path.abspath(path)
    while os.path.dirname(path) != path:
        if path.endswith(".app"):
            return path
        path = os.path.dirname(path)
    return None


def candidates() -> list[str]:
    """Where this interpreter's program may be, most likely first (each still to be checked)."""
    version = "{}.{}".format(*sys.version_info[:2])
    prefixes = list(dict.fromkeys([sys.prefix, sys.exec_prefix]))
    found = []
    if os.path.basename(sys.executable).lower().startswith("python"):
        found.append(sys.executable)
    if os.name == "nt":
        for prefix in prefixes:
            found += [os.path.join(prefix, "python.exe"), os.path.join(prefix, "python3.exe")]
            qgis_prefix = os.path.dirname(os.path.dirname(prefix))  # OSGeo4W: <prefix>/apps/Python3x
            found += [os.path.join(qgis_prefix, "bin", "python3.exe"), os.path.join(qgis_prefix, "bin", "python.exe")]
    else:
        for path in (sys.prefix, sys.executable):
            bundle = app_bundle(path)
            if bundle:
                found.append(os.path.join(bundle, "Contents", "MacOS", "bin", "python3"))
        for prefix in prefixes:
            found += [os.path.join(prefix, "bin", "python" + version), os.path.join(prefix, "bin", "python3")]
    base = getattr(sys, "_base_executable", "")
    if base:
        found.append(base)
    return [path for path in dict.fromkeys(found) if os.path.isfile(path)]


def is_this_python(path: str) -> bool:
    """Whether ``path`` starts a Python of this version with this ``sys.prefix``."""
    try:
        done = subprocess.run([path, "-c", PROBE], capture_output=True, text=True, timeout=PROBE_SECONDS,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or len(lines) != 2:
        return False
    return lines[0] == "{}.{}".format(*sys.version_info[:2]) and same_path(lines[1], sys.prefix)


@functools.lru_cache(maxsize=None)
def python_executable() -> str | None:
    """The program that starts this very Python (same version and prefix), or None when none is found."""
    return next((path for path in candidates() if is_this_python(path)), None)
