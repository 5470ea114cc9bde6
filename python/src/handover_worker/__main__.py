"""python3 -m handover_worker {wsgi,asgi} MODULE:APP [options]: run as a `handover serve`
prefork worker."""

import argparse
import sys

from . import Worker, NotSupervised
from ._app import EXIT_APP_LOAD, EXIT_NOT_SUPERVISED, AppLoadError, load

_NOT_SUPERVISED = """\
handover_worker: not started by `handover serve` in prefork mode ({why}).
Run it as the supervisor's worker program, for example:
    handover serve -l tcp://127.0.0.1:8080 -w 4 -- python3 -m handover_worker {kind} {app}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m handover_worker",
        description="Serve a WSGI or ASGI app as a `handover serve` prefork worker.")
    sub = parser.add_subparsers(dest="kind", required=True)
    w = sub.add_parser("wsgi", help="a WSGI app (Flask, Django, ...): a thread pool per worker")
    w.add_argument("app", help="MODULE:ATTRIBUTE, e.g. myapp:app")
    w.add_argument("--threads", type=_positive, default=4,
                   help="connections served at once (the capacity declared to the supervisor); default 4")
    w.add_argument("--keepalive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection is kept; default 5")
    w.add_argument("--timeout", type=float, default=30.0,
                   help="seconds one read or write inside a request may wait; default 30")
    a = sub.add_parser("asgi", help="an ASGI app (FastAPI, Starlette, ...): asyncio, uvicorn's HTTP layer")
    a.add_argument("app", help="MODULE:ATTRIBUTE, e.g. myapp:app")
    a.add_argument("--capacity", type=_positive, default=1000,
                   help="connections served at once (declared to the supervisor); default 1000")
    a.add_argument("--keepalive", type=float, default=5.0,
                   help="seconds an idle keep-alive connection is kept; default 5")
    a.add_argument("--lifespan", choices=["auto", "on", "off"], default="auto")
    a.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    a.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    # The app first (the supervisor counts a worker as started at HELLO), then the channel.
    try:
        app = load(args.app)
    except AppLoadError as e:
        sys.stderr.write("handover_worker: cannot load the app: %s\n" % e)
        return EXIT_APP_LOAD
    try:
        worker = Worker.from_environ()
    except NotSupervised as e:
        sys.stderr.write(_NOT_SUPERVISED.format(why=e, kind=args.kind, app=args.app))
        return EXIT_NOT_SUPERVISED

    if args.kind == "wsgi":
        from . import wsgi

        wsgi.serve(app, worker, wsgi.Options(threads=args.threads, keepalive=args.keepalive,
                                             timeout=args.timeout))
        return 0
    from . import asgi

    return asgi.serve(app, worker, asgi.Options(
        capacity=args.capacity, keepalive=args.keepalive, lifespan=args.lifespan,
        access_log=args.access_log, log_level=args.log_level))


def _positive(s):
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


if __name__ == "__main__":
    sys.exit(main())
