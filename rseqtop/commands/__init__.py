"""The command line: each command wires the parts together; nothing imports these."""
