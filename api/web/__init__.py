"""The web page at ``/``: plain static files (no build step, nothing fetched from
elsewhere), which talk to the same API as every other client with the user's key."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent

# The page runs only its own script, talks only to this origin, and may not be framed;
# whatever a job name, class name or error holds is shown as text, never as markup.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _Assets(StaticFiles):
    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        response.headers["Cache-Control"] = "no-cache"  # revalidated by ETag after upgrades
        return response


def mount_page(app: FastAPI) -> None:
    """``/`` answers the page, ``/static/...`` its script and style sheet."""

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(HERE / "index.html", headers=HEADERS | {"Cache-Control": "no-cache"})

    app.mount("/static", _Assets(directory=HERE / "static"), name="static")
