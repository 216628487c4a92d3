"""setuptools hook of larder-client: generates the gRPC stubs into the build tree.

Everything else (name, version, dependencies) is in pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate


class BuildWithStubs(build_py):
    """build_py that also writes larder_client/_gen (from ../../proto) into build_lib."""

    def run(self) -> None:
        super().run()
        for path in generate.generate(Path(self.build_lib)):
            self.announce(f"generated {path}", level=2)


setup(cmdclass={"build_py": BuildWithStubs})
