"""corral.master: the prefork arbiter and the `serve` command."""
