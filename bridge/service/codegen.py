"""Regenerate the committed Python stubs of the bridge contract.

::

    python -m kernelpit.service.codegen          # rewrite bridge/v1/ from proto/kernelpit/v1/
    python -m kernelpit.service.codegen --check  # exit 1 when the committed stubs are stale

The stubs are generated with grpcio-tools from ``proto/`` (``-Iproto``), so
their imports read ``from kernelpit.v1 import ..._pb2`` and resolve to the
``kernelpit.v1`` package (``bridge/v1/`` in the source tree).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "kernelpit" / "v1"
STUB_DIR = ROOT / "bridge" / "v1"
INIT = '"""Generated gRPC stubs of the kernelpit.v1 contract (proto/kernelpit/v1); do not edit."""\n'


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto of the contract; returns the generated files in ``out``."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("grpcio-tools is needed to generate stubs: pip install grpcio-tools") from None
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files in {PROTO_DIR}")
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
                *(str(p.relative_to(PROTO_ROOT)) for p in protos)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        out.mkdir(parents=True, exist_ok=True)
        made = []
        for f in sorted((Path(tmp) / "kernelpit" / "v1").iterdir()):
            shutil.copy(f, out / f.name)
            made.append(out / f.name)
    (out / "__init__.py").write_text(INIT)
    return [out / "__init__.py", *made]


def stale(committed: Path = STUB_DIR) -> list[str]:
    """Names of generated files that differ from (or are missing in) ``committed``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        wrong = [f.name for f in fresh
                 if not (committed / f.name).exists()
                 or not filecmp.cmp(f, committed / f.name, shallow=False)]
        extra = {p.name for p in committed.glob("*_pb2*.py*")} - {f.name for f in fresh}
    return sorted(wrong + list(extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernelpit.service.codegen",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only check that the committed stubs match the .proto files")
    opts = parser.parse_args(argv)
    if opts.check:
        bad = stale()
        if bad:
            print(f"stale stubs in {STUB_DIR}: {', '.join(bad)}; run "
                  "`python -m kernelpit.service.codegen`", file=sys.stderr)
            return 1
        print("stubs are up to date")
        return 0
    for f in generate(STUB_DIR):
        print(f"wrote {f.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
