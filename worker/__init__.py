"""corral.worker: the per-process server (StatelessServer, HTTP/1.1, WebSocket)."""
