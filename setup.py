"""Builds the optional C accelerator; everything else is in pyproject.toml.

If no C compiler is available the build goes on without it and imgnorm uses
its numpy fallback, which gives identical results, only slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("imgnorm._kernels", ["imgnorm/_kernels.c"], extra_compile_args=["-O3"],
                             optional=True)])
