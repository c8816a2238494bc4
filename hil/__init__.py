"""Hardware-in-the-loop harness: emulated nodes, fault injection, broker control."""
