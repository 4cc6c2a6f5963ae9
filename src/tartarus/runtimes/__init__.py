"""Runtime adapters behind one interface (see `base`), and the registry that picks one."""
