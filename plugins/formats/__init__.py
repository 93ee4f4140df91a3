"""Built-in submission formats: masks-png, masks-tiff, rle-json and npz."""

from cpx.kernel.hookspecs import hookimpl


@hookimpl
def register_submission_formats(register):
    pass
