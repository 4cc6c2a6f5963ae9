"""The node engine (Hecatoncheir): prepares, launches, supervises and cleans up sandboxes."""
