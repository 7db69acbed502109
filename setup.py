"""Builds bookstream's compiled book core (``app/book_core_c.pyx``, Cython) with the package.

pyproject.toml holds everything else. Without a C compiler the build warns and bookstream runs
its Python core (``app/book_core.py``): same results, slower (README "The book core").
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install: the Python core is always there."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler, no headers: whatever it is, say it and go on
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"WARNING: bookstream's compiled book core was not built ({exc}); the Python core runs "
              "instead (BOOK_CORE, README 'The book core')", file=sys.stderr)


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is not installed: bookstream's compiled book core is not built", file=sys.stderr)
        return []
    return cythonize([Extension("app.book_core_c", ["app/book_core_c.pyx"], extra_compile_args=["-O2"])],
                     quiet=True)  # the directives are in the .pyx's first line


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
