"""A plain FastAPI app, as a user would write it: nothing here knows about handover."""

import asyncio
import hashlib
import os

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

app = FastAPI()


@app.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)  # FastAPI: no HEAD by default
async def index():
    return "hello from fastapi %d\n" % os.getpid()


@app.post("/upload", response_class=PlainTextResponse)
async def upload(request: Request):
    body = await request.body()
    return "%d %s" % (len(body), hashlib.sha256(body).hexdigest())


@app.get("/stream")
async def stream():
    async def chunks():
        for i in range(100):
            yield "chunk %d\n" % i
    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/remote", response_class=PlainTextResponse)
async def remote(request: Request):
    return "%s %s" % (request.client.host, request.client.port)


@app.get("/raise")
async def boom():
    raise RuntimeError("the app failed on purpose")


@app.get("/slow", response_class=PlainTextResponse)
async def slow(s: float = 0.001):
    await asyncio.sleep(s)
    return "hello from fastapi %d\n" % os.getpid()
