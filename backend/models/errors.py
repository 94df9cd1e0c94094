"""Errors the model manager raises; each message is fit to show a user as is."""


class ModelError(Exception):
    pass


class UnknownCheckpointError(ModelError, ValueError):
    pass


class CheckpointLoadError(ModelError):
    pass
