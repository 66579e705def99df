"""The library's one error family: every failure a user can fix is a G2PError whose message
names the row, file, flag or folder and the fix. The CLI and `jobs/transcribe.py` turn only
these into one line and exit status 1; anything else is a bug and keeps its traceback."""

from __future__ import annotations

__all__ = [
    "ArtifactError", "CheckpointError", "ConfigError", "G2PError", "InputError", "JobFailed",
    "ShardInputError",
]


class G2PError(Exception):
    """Base of every error the library raises on purpose."""


class ConfigError(G2PError):
    """A setting that cannot work (a YAML key, a flag, a value the cluster cannot hold)."""


class InputError(G2PError):
    """Input that cannot be transcribed: a file, a column, a lexicon line, a word too long."""


class ShardInputError(InputError):
    """A shard's rows cannot be read as they are: deterministic, so not retried elsewhere."""


class CheckpointError(G2PError):
    """A checkpoint that cannot be found or read."""


class ArtifactError(G2PError):
    """A compiled artifact set that does not match the request, this host or its own files."""


class JobFailed(G2PError):
    """Some shards failed after their retries; the others are committed. Carries the report."""

    def __init__(self, report):
        super().__init__(report.summary())
        self.report = report
