"""Meshes and logical-axis rules, multi-host start-up, the memory plan."""
