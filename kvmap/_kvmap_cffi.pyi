# The cffi extension module built by native/build_kvmap.py has no type
# information of its own: its ffi and lib are Any here, and kvmap/_lib.py
# and kvmap/checker/pagelayout.py, the only modules that import it, give
# every public method a precise type on top of it.
from typing import Any

ffi: Any
lib: Any
