"""KServe's Python model server (the `kserve` package) wrapping the same ONNX file with ONNX Runtime.

Runs in its own virtual environment (`make bench-tools` builds .venv-kserve: kserve's pins
clash with prefect's). Configured as one would run it in production: one worker, gRPC only when a
port is given, request logging down to warnings (its default logs ~4 lines per request, 25-35% of
its throughput). Any ONNX model: a lakeloop model's columns are packed as lakeloop packs them, any
other model's tensors go to ONNX Runtime as they come; every output is answered, binary where the
request asks (KServe's own rule). KServe hard-codes hosts 0.0.0.0 and [::]; this harness binds both
servers to 127.0.0.1 instead, as every server in lakeloop's benchmarks is.

Usage: .venv-kserve/bin/python benchmarks/_kserve_server.py MODEL.onnx NAME PORT [GRPC_PORT]
"""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path

import grpc
import kserve
import kserve.model_server as model_server
import kserve.protocol.grpc.server as grpc_server
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lakeloop.packing only: numpy, no lakeloop install
from lakeloop.packing import pack, packing_of


class LoopbackRESTServer(model_server.RESTServer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = "127.0.0.1"


model_server.RESTServer = LoopbackRESTServer


class _LoopbackAio:
    """grpc.aio as kserve's gRPC server module sees it, with its "[::]:PORT" listen address on loopback."""

    def __getattr__(self, name: str):
        return getattr(grpc.aio, name)

    @staticmethod
    def server(*args, **kwargs):
        server = grpc.aio.server(*args, **kwargs)
        add = server.add_insecure_port
        server.add_insecure_port = lambda address: add(address.replace("[::]", "127.0.0.1"))
        return server


grpc_server.aio = _LoopbackAio()


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.packing = packing_of(self.session.get_modelmeta().custom_metadata_map)
        strings = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}
        self.strings = {c for name in strings for c in self.packing.get(name, [name])}
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {}
        for tensor in payload.inputs:
            array = tensor.as_numpy()
            if tensor.name in self.strings:
                array = np.array([v.decode() if isinstance(v, bytes) else v for v in array.ravel()],
                                 dtype=object).reshape(array.shape)
            feeds[tensor.name] = array.reshape(-1, 1) if self.packing else array
        results = self.session.run(None, pack(feeds, self.packing) if self.packing else feeds)
        binary = payload.use_binary_outputs
        outputs = []
        for spec, value in zip(self.session.get_outputs(), results, strict=True):
            output = InferOutput(name=spec.name, shape=list(value.shape), datatype=DATATYPES[value.dtype.str[1:]])
            output.set_data_from_numpy(value, binary_data=binary)
            outputs.append(output)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4()),
                             use_binary_outputs=binary)


DATATYPES = {"f4": "FP32", "f8": "FP64", "i8": "INT64", "i4": "INT32", "b1": "BOOL", "O": "BYTES"}


if __name__ == "__main__":
    path, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    grpc_port = int(sys.argv[4]) if len(sys.argv) > 4 else None
    model = OnnxModel(name, path)
    server = kserve.ModelServer(http_port=port, workers=1, enable_grpc=grpc_port is not None,
                                grpc_port=grpc_port or 8081, enable_latency_logging=False, enable_docs_url=False)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])
