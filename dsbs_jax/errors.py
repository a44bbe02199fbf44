"""The one exception type the binaries report as a short message.

Problems a user must fix — configuration, paths, checkpoints that do not fit
the model, unusable data — raise subclasses of `UserError`; the binaries print
its message (which says what is wrong and where) and exit with status 2,
instead of a traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's configuration, files or data."""
