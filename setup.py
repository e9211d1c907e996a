"""The one compiled part of lakeloop: the model server's HTTP front (lakeloop/serving/_front.c).

It is optional: where it cannot be built (no C compiler, not Linux), the package installs without it and
`lakeloop serve` runs on uvicorn instead (`lakeloop serve --http uvicorn` chooses that anywhere).
"""

import sys

from setuptools import Extension, setup

front = Extension("lakeloop.serving._front", ["lakeloop/serving/_front.c"], optional=True,
                  extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"])
setup(ext_modules=[front] if sys.platform.startswith("linux") else [])
