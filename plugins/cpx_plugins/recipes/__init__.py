"""The built-in recipes (``*.yaml``, package data of ``cpx_plugins.recipes``), so they work from any
directory. A workspace's own recipes live in its ``experiments/`` folder and override these by name."""
