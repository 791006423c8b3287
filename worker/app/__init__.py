"""The application: what the worker runs, and the pool it runs it in.

It owns loading the application named on the command line and making it an ASGI 3 callable (`load`), the
application-instance pool (`pool.StatelessServer`, asgiref's API) and its instances' eager first step
(`eager`), the ASGI lifespan protocol (`lifespan`), and what gunicorn's server hooks receive in a worker with
the pre/post_request middleware (`hooks`).

May import: `corral.shared`. It knows no protocol and no connection: the master imports it too (to check
the app before forking).
"""
