"""KServe's Python model server (the `kserve` package) wrapping the same ONNX file with ONNX Runtime.

Runs in its own virtual environment (`make bench-tools` builds .venv-kserve: kserve's pins
clash with prefect's). Configured as one would run it in production: one worker, no gRPC, request
logging down to warnings (its default logs ~4 lines per request, 25-35% of its throughput).
KServe hard-codes host 0.0.0.0; this harness binds it to 127.0.0.1 instead, as every server in
lakeloop's benchmarks is.

Usage: .venv-kserve/bin/python benchmarks/_kserve_server.py MODEL.onnx PORT
"""

from __future__ import annotations

import logging
import sys
import uuid

import kserve
import kserve.model_server as model_server
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class LoopbackRESTServer(model_server.RESTServer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = "127.0.0.1"


model_server.RESTServer = LoopbackRESTServer


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
        self.strings = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {}
        for tensor in payload.inputs:
            array = tensor.as_numpy()
            if tensor.name in self.strings:
                array = np.array([v.decode() if isinstance(v, bytes) else v for v in array.ravel()], dtype=object)
            feeds[tensor.name] = array.reshape(-1, 1)
        (probability,) = self.session.run(["probability"], feeds)
        output = InferOutput(name="probability", shape=list(probability.shape), datatype="FP32")
        output.set_data_from_numpy(probability, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    path, port = sys.argv[1], int(sys.argv[2])
    model = OnnxModel("fraud", path)
    server = kserve.ModelServer(http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False,
                                enable_docs_url=False)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])
