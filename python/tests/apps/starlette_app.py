"""A plain Starlette app, as a user would write it: nothing here knows about handover."""

import asyncio
import contextlib
import hashlib
import os

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

STATE = {"started": False}


async def index(request):
    return PlainTextResponse("hello from starlette %d\n" % os.getpid())


async def upload(request):
    body = await request.body()
    return PlainTextResponse("%d %s" % (len(body), hashlib.sha256(body).hexdigest()))


async def stream(request):
    async def chunks():
        for i in range(100):
            yield "chunk %d\n" % i
    return StreamingResponse(chunks(), media_type="text/plain")


async def remote(request):
    return PlainTextResponse("%s %s" % (request.client.host, request.client.port))


async def boom(request):
    raise RuntimeError("the app failed on purpose")


async def slow(request):
    await asyncio.sleep(float(request.query_params.get("s", "0.001")))
    assert STATE["started"], "lifespan startup ran"
    return PlainTextResponse("hello from starlette %d\n" % os.getpid())


async def echo(websocket):
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text("echo: " + text)
    await websocket.close()


@contextlib.asynccontextmanager
async def lifespan(app):
    STATE["started"] = True
    yield
    print("lifespan shutdown ran", flush=True)


app = Starlette(lifespan=lifespan, routes=[
    Route("/", index), Route("/upload", upload, methods=["POST"]), Route("/stream", stream),
    Route("/remote", remote), Route("/raise", boom), Route("/slow", slow),
    WebSocketRoute("/ws", echo)])
