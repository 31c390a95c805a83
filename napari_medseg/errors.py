"""User-facing errors: each carries a message fit for a notification or one stderr line."""


class MedsegError(Exception):
    """Base class: the GUI shows the message, the CLI prints it and exits with code 2."""


class ImageReadError(MedsegError):
    """A file or folder could not be read as an image."""


class ImageWriteError(MedsegError):
    """Labels could not be written."""


class CheckpointError(MedsegError):
    """A weights file is missing, corrupt, of another family or unsafe to load."""


class WeightsNotInstalled(CheckpointError):
    """The registry's weights for a model are not in the weights folder."""


class PromptError(MedsegError):
    """A box, point or report cannot be used with this image or model."""


class Cancelled(MedsegError):
    """The user cancelled a long operation."""
