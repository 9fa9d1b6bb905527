"""The Kong face: the plugin over Kong's PDK, the plugin server's transport and events, how
the process starts, and the operator log carried into Kong's error log."""
