"""corral.master: the `serve` command and the prefork arbiter, in rooms by concern.

    cli.py      `serve [OPTIONS] APP` and `serve status`: the command line and its exit codes
    arbiter/    the master loop and the workers' lives: fork, watch, replace, reload, upgrade, stop
    config/     the settings from flags, CORRAL_* variables and config files; the peers' names for them
                and what a gunicorn command line or config file carries over
    hooks/      gunicorn's server hooks: the `server` and `cfg` objects they get, and calling them
    listen/     the listening sockets (TCP, unix, fd://, systemd) and the TLS context
    observe/    what the master reports: the error log, the summed metrics, /metrics, statsd, systemd
    status/     how the outside finds and asks a running master: the pid file, the control socket

Imports go one way: the master may import corral.worker and corral.shared, which never import it. Between
the rooms: cli.py may import every room; arbiter/ imports hooks/, listen/, observe/ and status/; hooks/
imports config/ and listen/; observe/ imports listen/; config/, listen/ and status/ import no other room.
So the arbiter is handed settings and never reads flags or files, and the rooms below it never reach up
into the loop. Each room's `__init__` says what it owns and may import; tests/test_import_direction.py
holds the same table and fails on an import against it. The `__init__` files stay empty of code: importing
a room costs nothing, and `serve` imports only what its command needs.
"""
