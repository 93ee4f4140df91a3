"""Built-in metrics."""

from cpx.kernel.hookspecs import hookimpl


@hookimpl
def register_metrics(register):
    pass
