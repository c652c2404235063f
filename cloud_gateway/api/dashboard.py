"""The dashboard: its page at `/` and its static files, served without a token."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from cloud_gateway.api.routes import Answer, Handler, Route

STATIC = Path(__file__).resolve().parent / "static"
TAGS = ("dashboard",)
NO_STORE = {"Cache-Control": "no-store"}
SCRIPTS = (
    ("dashboard.js", "The dashboard's core: token, API calls, pages, the campaign list"),
    ("form.js", "The dashboard's campaign form: create and edit, live audience, inline errors"),
    ("pages.js", "The dashboard's pages: a campaign's trends, models, devices"),
    ("sales.js", "The dashboard's social commerce: live sales, stock, group, cut and tier figures"),
)


def _file(name: str) -> Handler:
    """A handler serving the static file `name` (the page's data comes from the API)."""

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name, headers=NO_STORE)

    return serve


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/",
        _file("index.html"),
        "The dashboard (HTML)",
        responses={200: Answer("OK", media="text/html")},
        public=True,
        tags=TAGS,
    ),
    *(
        Route(
            "get",
            f"/static/{name}",
            _file(name),
            summary,
            responses={200: Answer("OK", media="text/javascript")},
            public=True,
            tags=TAGS,
        )
        for name, summary in SCRIPTS
    ),
    Route(
        "get",
        "/static/dashboard.css",
        _file("dashboard.css"),
        "The dashboard's style sheet",
        responses={200: Answer("OK", media="text/css")},
        public=True,
        tags=TAGS,
    ),
)
