"""Built-in cpx plugins, installed as ``cpx_plugins``; they register with the same marker as third-party ones."""
