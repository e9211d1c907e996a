"""Regenerate lakeloop/serving/_inference_pb2.py from inference.proto (`make proto`; needs grpcio-tools).

The generated module is post-processed so that it runs on any protobuf runtime the `serve` extra
admits: the gencode/runtime version check protoc emits is dropped (the builder API it uses exists
since protobuf 3.20), and the descriptors go into a private pool, so the module can be imported in
the same process as another copy of the protocol (tritonclient's, KServe's), which share its
package name `inference`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "_inference_pb2.py"


def generate() -> str:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--python_out={out}",
                        str(HERE / "inference.proto")], check=True)
        code = (Path(out) / "inference_pb2.py").read_text()
    code = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\(.*?\n\)\n", "", code, flags=re.S)
    code = code.replace("from google.protobuf import runtime_version as _runtime_version\n", "")
    code = re.sub(r"# Protobuf Python Version: .*\n", "", code)
    code = code.replace("_descriptor_pool.Default().AddSerializedFile(",
                        "_POOL.AddSerializedFile(")
    code = code.replace("_sym_db = _symbol_database.Default()\n",
                        "_sym_db = _symbol_database.Default()\n_POOL = _descriptor_pool.DescriptorPool()  # private: "
                        "see lakeloop/serving/proto/generate.py\n")
    return code


if __name__ == "__main__":
    TARGET.write_text(generate())
    print(f"wrote {TARGET}")
