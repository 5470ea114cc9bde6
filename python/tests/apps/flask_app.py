"""A plain Flask app, as a user would write it: nothing here knows about handover."""

import hashlib
import os
import time

from flask import Flask, Response, request

app = Flask(__name__)


@app.get("/")
def index():
    return "hello from flask %d\n" % os.getpid()


@app.post("/upload")
def upload():
    body = request.get_data()
    return "%d %s" % (len(body), hashlib.sha256(body).hexdigest())


@app.get("/stream")
def stream():
    def chunks():
        for i in range(100):
            yield "chunk %d\n" % i
    return Response(chunks(), mimetype="text/plain")  # no length: chunked


@app.get("/remote")
def remote():
    return "%s %s" % (request.environ["REMOTE_ADDR"], request.environ["REMOTE_PORT"])


@app.get("/raise")
def boom():
    raise RuntimeError("the app failed on purpose")


@app.get("/slow")
def slow():
    time.sleep(float(request.args.get("s", "0.001")))
    return "hello from flask %d\n" % os.getpid()
