"""Naming critical sections: ELF symbols and source lines of a process's code."""
