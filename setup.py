"""Build the nfcl._core extension from csrc/*.c against scipy-openblas32.

Environment switches (all off by default):
  NFCL_NATIVE=1    add -march=native (never for wheels you share)
  NFCL_SANITIZE=1  build with AddressSanitizer and UBSan, -O1 -g
"""
import glob
import os

import numpy as np
import scipy_openblas32 as openblas
from setuptools import Extension, setup

# No fast-math: values follow IEEE float rules. -fno-trapping-math and
# -fno-math-errno change no value (the core never reads FP exception flags or
# errno; it tests results with isfinite) but let gcc vectorise loops that hold
# a compare-and-select or a sqrt.
compile_args = ["-std=c11", "-O3", "-fno-fast-math", "-fno-trapping-math",
                "-fno-math-errno", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
link_args = ["-fopenmp"]
if os.environ.get("NFCL_NATIVE") == "1":
    compile_args.append("-march=native")
if os.environ.get("NFCL_SANITIZE") == "1":
    compile_args = [a for a in compile_args if not a.startswith("-O")]
    compile_args += ["-O1", "-g", "-fsanitize=address,undefined",
                     "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]

core = Extension(
    "nfcl._core",
    sources=sorted(glob.glob("csrc/*.c")),
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=["csrc", np.get_include(), openblas.get_include_dir()],
    library_dirs=[openblas.get_lib_dir()],
    libraries=[openblas.get_library()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(ext_modules=[core])
