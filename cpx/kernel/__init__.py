"""The kernel: what every other part of cpx stands on.

Owns the domain errors, the plugin system (hook specifications, registries, the plugin
manager), the workspace, experiment configs and recipes, file primitives (atomic writes,
sha256, JSON) and the compute environment (device, precision, autocast, parameter counts).

May import: the standard library and third-party libraries only, never another ``cpx``
package. Never imports typer or rich.
"""
