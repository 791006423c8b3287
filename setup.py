"""The one thing pyproject.toml cannot say: the optional C module of the HTTP/1.1 request head.

It is built at install when a C compiler and Python's headers are there; when not, setuptools says so
("building optional extension ... failed") and the install goes on: corral then parses every request the
pure-Python way (`corral.worker.http1.native`), as it does with CORRAL_NO_EXTENSIONS=1.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("corral.worker.http1._head", ["worker/http1/_head.c"], optional=True)])
