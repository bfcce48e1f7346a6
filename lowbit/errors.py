"""The small error vocabulary of lowbit.

Every message names the file or tensor, what was expected, what was found, and the fix.
The CLI turns a LowbitError into one line on stderr and exit code 2.
"""


class LowbitError(Exception):
    """Base class: a problem the user can fix (bad input, bad option, missing file)."""


class CheckpointError(LowbitError):
    """A checkpoint on disk is missing, truncated, corrupt or inconsistent."""


class ConfigError(LowbitError):
    """config.json / quantization_config is missing, invalid or unsupported."""


class SchemeError(LowbitError):
    """A tensor or option does not fit the quantization scheme."""


class KernelError(LowbitError):
    """A kernel launcher was given an argument of the wrong dtype, shape, layout or device."""


class HubError(LowbitError):
    """The Hugging Face hub could not be reached or the repo/revision does not exist."""


class VerifyError(LowbitError):
    """A verification could not be run (not: a check that ran and failed)."""
