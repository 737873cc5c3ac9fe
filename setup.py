# cffi cannot be declared in pyproject.toml yet: this file only names the builder.
from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
