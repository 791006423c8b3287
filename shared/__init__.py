"""corral.shared: code used by both the master and the workers (bridging layer, settings)."""

from corral.shared.hotpath import install_switch as _install_switch

_install_switch()  # CORRAL_PURE_PYTHON=1: the compiled modules load from their .py sources (hotpath.py)
