"""corral's benchmarks: run from the repository root (`python -m bench ...`, `python bench/bridge.py`)."""
