"""lakeloop: versioned data → validated → trained → compressed → served → watched → retrained."""

from lakeloop.errors import LakeloopError

__all__ = ["LakeloopError", "__version__"]
__version__ = "0.1.0"
