"""The baseline: the model server people write first — FastAPI, a pydantic request model, torch eager.

It speaks the same V2 JSON as the others (so the load generator sends identical bytes), validates
with pydantic, rebuilds a DataFrame, runs the training-time preprocessing in Python and the net in
torch eager. `async def` (a sync `def` endpoint adds a 60-80 ms p99 tail under concurrency).

Usage: python benchmarks/_naive_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, HTTPException  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from lakeloop.modeling.features import FeatureSpec  # noqa: E402
from lakeloop.modeling.nets import TabularNet  # noqa: E402


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] | list[str]


class InferenceRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]


def main() -> None:
    model_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    spec = FeatureSpec.from_json((model_dir / "features.json").read_text())
    net = TabularNet(spec.numeric_width, spec.cardinalities)
    net.load_state_dict(torch.load(model_dir / "net.pt"))
    net.eval()
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.post("/v2/models/fraud/infer")
    async def infer(request: InferenceRequest) -> dict:
        frame = pd.DataFrame({t.name: t.data for t in request.inputs})
        missing = set(spec.inputs) - set(frame.columns)
        if missing:
            raise HTTPException(400, f"missing inputs {sorted(missing)}")
        numeric, categorical = spec.encode(frame)
        with torch.no_grad():
            probability = torch.sigmoid(net(torch.from_numpy(numeric), torch.from_numpy(categorical))[:, 0])
        return {"model_name": "fraud", "id": request.id, "outputs": [
            {"name": "probability", "datatype": "FP32", "shape": [len(frame)], "data": probability.tolist()}]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
