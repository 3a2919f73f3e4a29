"""Snapshots, rates and the snapshot-source protocol: what every stage agrees on."""
