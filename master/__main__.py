"""`python -m corral.master [OPTIONS] APP`: the same as the `serve` command."""

from corral.master.cli import main

if __name__ == "__main__":
    main()
