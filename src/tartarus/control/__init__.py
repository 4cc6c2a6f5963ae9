"""The control plane between the API (and the CLI) and the node engine.

What decides whether and how a sandbox may be created lives here, above the engine that
carries the decision out: Themis' policies combined per request, the Judges' admission
chain (with plugins), Typhon's quarantine routing. The node never imports this package: it
receives an admitted spec whose fields (isolation, seccomp, network, enforcement) already
say everything it must enforce.
"""
