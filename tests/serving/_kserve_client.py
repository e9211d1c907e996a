"""KServe's own clients — `InferenceGRPCClient` and `InferenceRESTClient` (V2) — against a lakeloop server,
run by the Python of KServe's venv (`make kserve`): KServe's pins (pandas < 3, psutil < 6) clash
with lakeloop's, so it cannot install beside it.

Usage: python tests/serving/_kserve_client.py GRPC_ADDRESS HTTP_URL MODEL KEY IN.npz OUT.npz
IN.npz holds the request's inputs by name (BYTES as object arrays of str); OUT.npz gets each client's
outputs as `grpc/<name>` and `rest/<name>`, and `probes`: server live, server ready and model ready over
gRPC, then over REST. A refused request exits 1 with the server's message.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64",
            np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL", np.dtype(object): "BYTES"}


def request_of(model: str, inputs: dict[str, np.ndarray]) -> InferRequest:
    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), DATATYPE[array.dtype])
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    return InferRequest(model_name=model, infer_inputs=tensors)


async def main(address: str, url: str, model: str, key: str, inputs: dict[str, np.ndarray]) -> dict:
    auth = (("authorization", f"Bearer {key}"),)
    got: dict[str, np.ndarray] = {}
    async with InferenceGRPCClient(address, timeout=30) as grpc_client:
        probes = [await grpc_client.is_server_live(), await grpc_client.is_server_ready(),
                  await grpc_client.is_model_ready(model)]
        answer = await grpc_client.infer(request_of(model, inputs), headers=auth)
        got |= {f"grpc/{o.name}": o.as_numpy() for o in answer.outputs}
    rest_client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        probes += [await rest_client.is_server_live(url), await rest_client.is_server_ready(url),
                   await rest_client.is_model_ready(url, model)]
        answer = await rest_client.infer(url, request_of(model, inputs), model_name=model,
                                         headers={"Authorization": f"Bearer {key}"})
        got |= {f"rest/{o.name}": o.as_numpy() for o in answer.outputs}
    finally:
        await rest_client.close()
    return got | {"probes": np.array(probes)}


if __name__ == "__main__":
    grpc_address, http_url, model_name, api_key, inputs_path, out_path = sys.argv[1:7]
    with np.load(inputs_path, allow_pickle=True) as stored:
        request_inputs = {name: stored[name] for name in stored.files}
    try:
        outputs = asyncio.run(main(grpc_address, http_url, model_name, api_key, request_inputs))
    except Exception as exc:  # the server's refusal, as KServe's client reports it
        sys.exit(f"{type(exc).__name__}: {exc}")
    np.savez(out_path, **outputs)
