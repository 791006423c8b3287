"""A corral config file with gunicorn's per-request hooks set to no-ops: `python -m bench --servers
corral,corral-hooks` measures what setting them costs (unset, they cost nothing: no middleware at all)."""


def pre_request(worker, req):
    pass


def post_request(worker, req, environ, resp):
    pass
