"""A FastAPI app with ASGIMiddleware (run under uvicorn)."""

import hashlib
import os

from fastapi import FastAPI, Request, WebSocket

from customer_auth.middleware import ASGIMiddleware

app = FastAPI()


@app.get("/whoami")
async def whoami(request: Request):
    return {
        "customer_id": getattr(request.state, "customer_id", None),
        "header": request.headers.get("x-customer-id"),
        "pid": os.getpid(),
    }


@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return {
        "customer_id": getattr(request.state, "customer_id", None),
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


@app.get("/health")
async def health(request: Request):
    return {
        "customer_id": getattr(request.state, "customer_id", None),
        "header": request.headers.get("x-customer-id"),
    }


@app.websocket("/ws")
async def whoami_over_websocket(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_json(
        {
            "customer_id": websocket.scope.get("state", {}).get("customer_id"),
            "header": websocket.headers.get("x-customer-id"),
        }
    )
    await websocket.close()


app.add_middleware(
    ASGIMiddleware,
    exempt=["/health"],
    max_body_size=4096,
    cache_ttl=3600,
    replay_protection=os.environ.get("REPLAY_PROTECTION") == "1",
)
