"""What every connection's protocol shares, below all of them.

It owns the one vocabulary of connection phases, pause reasons and response states (`phases`), flow
control both ways (`flow.FlowControl`), HTTP/1.x response heads and the server's own error answers
(`response`: status lines, `response_head`, `ProtocolError`; written by HTTP/1.1, WebSocket and WSGI), and
the date/server header block (`dates`).

May import: `corral.shared`.
"""
