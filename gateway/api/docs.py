"""``/docs``: the API reference (Swagger UI) served by the gateway itself.

Its assets come from the ``swagger-ui-bundle-v2`` package, so the page makes no request
outside the gateway: it works on a clinic network with no internet. Swagger UI's
validator badge (which calls a public service) is off.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

router = APIRouter(include_in_schema=False)


@router.get(DOCS_PATH)
async def api_docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Room audio gateway: partner API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        swagger_ui_parameters={
            "validatorUrl": None,
            "defaultModelsExpandDepth": 0,
            "displayOperationId": True,
        },
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
