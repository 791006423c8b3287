"""What wraps every connection and request, whatever its protocol: logic apart from the protocols.

It owns trusting proxy headers (`proxy_headers`: Forwarded, X-Forwarded-*), the PROXY protocol header's
parser (`proxy_protocol`), the ASGI TLS extension (`tlsinfo`), the health path's answer (`health`), what a
worker counts for metrics (`counters`), the access log (`accesslog`) and its WebSocket and JSON lines
(`sessionlog`), `--request-timeout` for ASGI (`deadline`), and minimum data rates (`datarate`). The
protocol classes that apply them (PROXY header, health path, metrics) are in `corral.worker.serve`.

May import: `corral.worker.conn`, `corral.shared`. No protocol: each protocol imports what it needs from
here.
"""
