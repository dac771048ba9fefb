# The C core is built by cffi in out-of-line API mode (native/build_kvmap.py).
from setuptools import setup

setup(cffi_modules=["native/build_kvmap.py:ffibuilder"])
