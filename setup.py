"""The one thing pyproject.toml cannot say: corral's optional C modules, the parser of ordinary HTTP/1.1
requests, the WSGI environ and the HTTP/1.1 response head.

They are built at install when a C compiler and Python's headers are there; when not, setuptools says so
("building optional extension ... failed") and the install goes on: corral then runs the pure-Python code they
stand in for (`corral.shared.native`), as it does with CORRAL_NO_EXTENSIONS=1.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("corral.worker.http1._head", ["worker/http1/_head.c"], optional=True),
        Extension("corral.shared._environ", ["shared/_environ.c"], optional=True),
        Extension("corral.worker.conn._response", ["worker/conn/_response.c"], optional=True),
    ]
)
