"""How the outside finds and asks a running master.

It owns the pid file (`pidfile`), the control socket the master answers and the `serve status` client
(`control`), and where a master started without `--pid` registers itself (`discover`).

May import: `corral.shared`. A client (`serve status`) runs it without starting anything else.
"""
