"""Built-in analyzer families. Installed as `interpsuite_plugins`; each family registers
itself through the `interpsuite` entry-point group exactly as a third-party package would."""
