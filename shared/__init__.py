"""corral.shared: code used by both the master and the workers (bridging layer, settings)."""
