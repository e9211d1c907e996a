"""CPU model server: ONNX Runtime behind the Open Inference Protocol v2 REST API.

Runs from the `serve` extra alone (onnxruntime, numpy, starlette/uvicorn, hvac, lakefs): nothing
here imports torch, pandas or prefect.
"""

from lakeloop.serving._app import create_app
from lakeloop.serving._logs import DirectorySink, InferenceLogger, LakeFSSink
from lakeloop.serving._main import ServeSettings, build, run, vault_settings
from lakeloop.serving._model import LoadedModel, Tuning, load
from lakeloop.serving._protocol import Limits, V2Error
from lakeloop.serving._server import ModelServer
from lakeloop.serving._sources import FileSource, RegistrySource

__all__ = ["DirectorySink", "FileSource", "InferenceLogger", "LakeFSSink", "Limits", "LoadedModel", "ModelServer",
           "RegistrySource", "ServeSettings", "Tuning", "V2Error", "build", "create_app", "load", "run",
           "vault_settings"]
