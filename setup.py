"""lakeloop's compiled parts, both in the model server and both optional: its HTTP front
(lakeloop/serving/_front.c) and the fast path of its V2 request parser (lakeloop/serving/_tensors.c).

Where they cannot be built (no C compiler, not Linux), the package installs without them: `lakeloop serve`
runs on uvicorn instead (`lakeloop serve --http uvicorn` chooses that anywhere) and parses requests in
Python, with the same answers.
"""

import sys

import numpy
from setuptools import Extension, setup

FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"]
front = Extension("lakeloop.serving._front", ["lakeloop/serving/_front.c"], optional=True, extra_compile_args=FLAGS)
tensors = Extension("lakeloop.serving._tensors", ["lakeloop/serving/_tensors.c"], optional=True,
                    include_dirs=[numpy.get_include()], extra_compile_args=FLAGS)
setup(ext_modules=[front, tensors] if sys.platform.startswith("linux") else [])
