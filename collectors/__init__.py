"""fieldgate collectors: one package per field protocol, plus what they share (core) and the forwarder."""
