"""What the workers accept on: the listening sockets and the TLS context.

It owns parsing bind addresses, binding them before any fork, inheriting them (fd://, systemd socket
activation, a USR2 upgrade's fds) and describing them as the log and gunicorn's hooks show them
(`sockets`), and the TLS server context built in the master at start and on HUP (`tls`).

May import: `corral.worker` (the ALPN protocols a worker speaks), `corral.shared`.
"""
