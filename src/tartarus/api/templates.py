"""Template routes: what a caller may create sandboxes from (read-only over the API)."""

from __future__ import annotations

from fastapi import APIRouter

from tartarus.api.auth import Caller
from tartarus.api.context import Ctx
from tartarus.api.schemas import TemplateDetail, TemplateList, TemplateOut
from tartarus.images.catalog import ResolvedTemplate

router = APIRouter(prefix="/v1/templates", tags=["templates"])


def _out(t: ResolvedTemplate) -> TemplateOut:
    return TemplateOut(
        name=t.name,
        source=t.source,
        built=t.built,
        image=t.image_hash,
        description=t.spec.description,
        resources=t.spec.resources,
    )


@router.get("", response_model=TemplateList)
async def list_templates(_: Caller, ctx: Ctx) -> TemplateList:
    return TemplateList(items=[_out(t) for t in ctx.engine.catalog.list()])


@router.get("/{name}", response_model=TemplateDetail)
async def get_template(name: str, _: Caller, ctx: Ctx) -> TemplateDetail:
    t = ctx.engine.catalog.resolve(name)  # NotFoundError -> 404
    return TemplateDetail(**_out(t).model_dump(), spec=t.spec.model_dump(mode="json"))
