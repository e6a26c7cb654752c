"""Download the collection (`curata.export`, the same code as `curata export`): CSV, JSON Lines, Parquet, or
the ERC-721 metadata files in a zip; curated values by default."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from curata.service.deps import get_state, require_api_key
from curata.service.errors import ApiError
from curata.service.state import ServiceState

router = APIRouter(prefix="/v1/export", tags=["curation"], dependencies=[Depends(require_api_key)])
_MEDIA = {"csv": "text/csv", "jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet",
          "erc721": "application/zip"}


@router.get("", summary="The collection as a file (curated values unless values=source)",
            response_class=FileResponse, responses={200: {"content": {m: {} for m in _MEDIA.values()}}})
def export(format: str = Query("csv", pattern="^(csv|jsonl|parquet|erc721)$"),
           values: str = Query("curated", pattern="^(curated|source)$"),
           include_excluded: bool = Query(False, description="Also the items a curator excluded or marked as "
                                          "duplicates."),
           state: ServiceState = Depends(get_state)) -> FileResponse:
    from curata.export import ExportError, export_collection

    # Written in a scratch folder of the workspace's cache (the same disk), sent, then deleted.
    scratch = Path(tempfile.mkdtemp(prefix="export-", dir=state.workspace.dir("cache")))
    name = "collection" + ("" if format == "erc721" else f".{format}")
    try:
        summary = export_collection(state.workspace, scratch / name, format, values=values,
                                    include_excluded=include_excluded)
        path = scratch / name
        if format == "erc721":  # a folder of files: one zip to download
            path = Path(shutil.make_archive(str(scratch / "collection-erc721"), "zip", root_dir=scratch / name))
    except ExportError as e:
        shutil.rmtree(scratch, ignore_errors=True)
        raise ApiError(409 if "no items" in str(e) else 422, "export_failed", str(e), None) from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    download = f"collection-{values}-v{summary['version']}{path.suffix}"
    return FileResponse(path, media_type=_MEDIA[format], filename=download,
                        headers={"X-Curata-Items": str(summary["items"])},
                        background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True))
