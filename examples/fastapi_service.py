"""A FastAPI service that serves signed requests only (run: uvicorn fastapi_service:app).

Needs: pip install 'customer-verification[middleware]' fastapi uvicorn, and DATABASE_URL naming
the customers database with a role that may read the table `customer`.
"""

from fastapi import FastAPI, Request

from customer_auth.middleware import ASGIMiddleware

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> dict[str, object]:
    return {"customer_id": request.state.customer_id, "order": await request.json()}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "up"}


# Every request but /health and the API's own docs must be signed.
app.add_middleware(ASGIMiddleware, exempt=["/health", "/docs", "/openapi.json"])
