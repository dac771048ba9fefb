"""cffi builder for the C core (out-of-line API mode).

setup.py names this file in ``cffi_modules``; the declarations come from the
cdef section of ``kvmap.h`` so the C header is the one description of the API.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["os.c", "crc32c.c", "pager.c", "btree.c"]


def _cdef():
    text = open(os.path.join(HERE, "kvmap.h")).read()
    return text.split("/* cdef-begin */")[1].split("/* cdef-end */")[0]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "kvmap._kvmap_cffi",
    '#include "kvmap.h"',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
