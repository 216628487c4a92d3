"""setuptools hook of larder-client: generates the gRPC stubs into the build tree, and builds
the native core (``larder_client._native``, the Rust crate in ``native/``) with
setuptools-rust.

The native core is optional: without a Rust toolchain the package builds without it and the
client uses grpcio (``LARDER_CLIENT_NATIVE=0`` skips it on purpose; ``=1`` makes a failed
build an error instead). Everything else (name, version, dependencies) is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools_rust import Binding, RustExtension

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate


class BuildWithStubs(build_py):
    """build_py that also writes larder_client/_gen (from ../../proto) into build_lib."""

    def run(self) -> None:
        super().run()
        for path in generate.generate(Path(self.build_lib)):
            self.announce(f"generated {path}", level=2)


def native_extensions() -> list[RustExtension]:
    wanted = os.environ.get("LARDER_CLIENT_NATIVE", "")
    if wanted == "0":
        return []
    return [
        RustExtension(
            "larder_client._native",
            path=str(Path(__file__).resolve().parent / "native" / "Cargo.toml"),
            binding=Binding.PyO3,
            optional=wanted != "1",
        )
    ]


setup(cmdclass={"build_py": BuildWithStubs}, rust_extensions=native_extensions())
