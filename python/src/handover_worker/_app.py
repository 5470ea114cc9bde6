"""Loading the user's app from "module:attribute", once per worker, before HELLO."""

import importlib
import os
import sys
import traceback

# Exit codes of `python3 -m handover_worker` (gunicorn's numbers where it has one).
EXIT_USAGE = 2  # bad arguments (argparse)
EXIT_STARTUP = 3  # the app's startup failed (ASGI lifespan)
EXIT_APP_LOAD = 4  # the app could not be imported (gunicorn's APP_LOAD_ERROR)
EXIT_NOT_SUPERVISED = 5  # not started by `handover serve` in prefork mode


class AppLoadError(Exception):
    pass


def load(spec):
    """Imports "module:attr" (attr may be dotted; default "app") and returns the object.
    Raises AppLoadError with a message for the user; the traceback of an error inside the
    app's own code is printed to stderr first."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise AppLoadError("app %r: expected MODULE:ATTRIBUTE, e.g. myapp:app" % spec)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # as `python3 -m` and gunicorn do: the working directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise AppLoadError("no module named %r in the working directory (%s) or on "
                               "sys.path" % (e.name, os.getcwd())) from None
        _print_user_traceback(e)
        raise AppLoadError("importing %r failed: %s" % (module_name, _one_line(e))) from None
    except BaseException as e:  # SyntaxError, an exception at import, even SystemExit
        _print_user_traceback(e)
        raise AppLoadError("importing %r failed: %s" % (module_name, _one_line(e))) from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError("module %r has no attribute %r" % (module_name, attr)) from None
    if not callable(obj):
        raise AppLoadError("%s is a %s, not a callable app" % (spec, type(obj).__name__))
    return obj


def _print_user_traceback(e):
    """The traceback from the app's own frames on (importlib's and ours are noise), or for
    a SyntaxError just the file, line and caret."""
    if isinstance(e, SyntaxError):
        lines = traceback.format_exception_only(type(e), e)
    else:
        tb = e.__traceback__
        while tb is not None and _machinery(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        lines = traceback.format_exception(type(e), e, tb)
    sys.stderr.write("".join(lines))


def _machinery(filename):
    return (filename.startswith("<frozen importlib") or filename == __file__
            or filename.endswith(("importlib/__init__.py", "importlib\\__init__.py")))


def _one_line(e):
    if isinstance(e, SyntaxError):
        return "SyntaxError: %s (%s, line %s)" % (e.msg, e.filename, e.lineno)
    return "%s: %s" % (type(e).__name__, e)
