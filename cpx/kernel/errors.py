"""Domain errors, and the ``Problem`` record that checks report. The CLI prints each error as
one line and exits with code 2."""

from dataclasses import dataclass


class CpxError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 2


class PluginError(CpxError):
    """A plugin is broken or registers a name that is already taken."""


class UnknownComponent(CpxError):
    """A model, loss, augmentation or competition name that nothing registered."""


class ConfigError(CpxError):
    """A recipe, override or option value that does not validate."""


class DataError(CpxError):
    """A data folder or file that cannot be used."""


class RunError(CpxError):
    """A run that does not exist or cannot be resumed."""


class LedgerBusy(RunError):
    """Another process holds the ledger's write lock for longer than the busy timeout."""


class LedgerDamaged(RunError):
    """The ledger file is damaged (not a database, or pages that do not read back), or was
    written by a newer cpx than this one."""


class RuleViolation(CpxError):
    """Something the competition's rules forbid (too many parameters, an ensemble, ...)."""


class SubmissionError(CpxError):
    """A submission that is malformed, missing or already recorded."""


class CodabenchError(CpxError):
    """The Codabench server refused a request or could not be reached."""


class BundleError(CpxError):
    """A competition bundle, or the scoring program it holds, that cannot be used (or failed)."""


class MissingDependency(CpxError):
    """An optional package a feature needs is not installed; the message names the extra
    (``pip install 'cpx[mlflow]'``)."""



@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file or folder: ``path`` (relative to what was checked, or empty
    for the whole), a short machine ``kind`` and a one-line ``message`` for people."""

    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message
