"""The kernel: what every other part of cpx stands on.

Owns the domain errors, the plugin system (hook specifications, registries, the plugin
manager), the workspace, experiment configs and recipes, file primitives (atomic writes,
sha256, JSON) and the compute environment (device, precision, autocast, parameter counts).

May import: no other cpx package (the standard library and third-party libraries only).
Never imports typer or rich.
"""
