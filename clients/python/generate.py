"""Generates the gRPC stubs of larder_client from the repository's proto/larder/v1/*.proto.

The stubs (``larder_client/_gen/larder/v1/*_pb2.py``, ``*_pb2_grpc.py`` and ``*_pb2.pyi``) are
build output: never committed, never edited by hand. ``pip install clients/python`` runs this
from setup.py; for working in the source tree, run ``python generate.py`` once.

How the imports are made to work inside the package: protoc derives a generated module's
import path from the .proto file's path relative to its ``-I`` root. The protos are therefore
copied into a scratch tree as ``larder_client/_gen/larder/v1/*.proto`` and compiled with that
tree as the only ``-I``, so the generated ``*_pb2_grpc.py`` says
``from larder_client._gen.larder.v1 import cache_pb2`` by itself. A proto that imports another
(``pipeline.proto`` imports ``larder/v1/cache.proto``) has that import line's path given the
same prefix in its staged copy, so each file is compiled once, under one name. Nothing
rewrites generated text and nothing touches sys.path (putting ``_gen`` on sys.path would expose a top-level
``larder`` package that could shadow, or be shadowed by, an application's own stubs). The
protobuf package (``larder.v1``) and so every message and service name on the wire are
unchanged; only the descriptor's file name carries the prefix.

Usage: python generate.py [OUTPUT_ROOT]   (default: this directory, i.e. the source tree)
The protos are read from ``../../proto`` (override with LARDER_PROTO_DIR).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_DIR = Path("larder_client") / "_gen" / "larder" / "v1"

_GEN_INIT = '''"""Generated gRPC stubs for larder.v1 (made by clients/python/generate.py; do not edit)."""
'''


def proto_dir() -> Path:
    """The directory holding ``larder/v1/*.proto``."""
    return Path(os.environ.get("LARDER_PROTO_DIR", HERE.parent.parent / "proto")).resolve()


def generate(out_root: Path) -> list[Path]:
    """Writes the stubs under ``out_root/larder_client/_gen`` and returns the files written."""
    from grpc_tools import protoc  # build-time dependency only

    source = proto_dir() / "larder" / "v1"
    protos = sorted(source.glob("*.proto"))
    if not protos:
        raise SystemExit(
            f"generate.py: no .proto files in {source}; build from a checkout of the repository "
            "or set LARDER_PROTO_DIR to the directory that holds larder/v1/*.proto"
        )
    out_root = out_root.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / PACKAGE_DIR
        staged.mkdir(parents=True)
        for proto in protos:
            text = proto.read_text(encoding="utf-8")
            (staged / proto.name).write_text(
                text.replace('import "larder/v1/', f'import "{PACKAGE_DIR.as_posix()}/'),
                encoding="utf-8",
            )
        include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
        args = [
            "grpc_tools.protoc",
            f"-I{scratch}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *(str(PACKAGE_DIR / p.name) for p in protos),
        ]
        cwd = os.getcwd()
        os.chdir(scratch)  # protoc resolves the relative .proto paths against -I
        try:
            rc = protoc.main(args)
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise SystemExit(f"generate.py: protoc failed with status {rc}")
    written = []
    gen = out_root / "larder_client" / "_gen"
    for pkg in (gen, gen / "larder", gen / "larder" / "v1"):
        init = pkg / "__init__.py"
        init.write_text(_GEN_INIT)
        written.append(init)
    written.extend(sorted((out_root / PACKAGE_DIR).glob("*_pb2*.py*")))
    return written


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(root):
        print(path)
