"""Configuration: where the settings come from, and what gunicorn users bring with them.

It owns the click options generated from the settings registry, CORRAL_* variables and config files
(`sources`), the table of every gunicorn setting and the peers' flags (`peer_names`), what a gunicorn
command line or config file asks of the process (`carryover`), and the migration page generated from that
table (`migration`).

May import: `corral.shared`. Configuration is values only: it starts nothing and knows no worker.
"""
