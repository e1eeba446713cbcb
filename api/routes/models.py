"""What a client may choose from: base models, named templates and the service's limits.
The web page builds its job form from this and from the schema's defaults and bounds."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from clipfit_core.prompts import DATASET_TEMPLATES, TEMPLATE_ENSEMBLES

from ..auth import Reader
from ..deps import SettingsDep

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelPublic(BaseModel):
    id: str = Field(description="the base model, as jobs and classify name it")
    default: bool = Field(description="used when a request names none")


class LimitsPublic(BaseModel):
    max_epochs: int
    max_images: int = Field(description="images per job or classify request")
    max_classes: int
    max_request_bytes: int
    max_image_pixels: int


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    templates: list[str] = Field(description="template and ensemble names a job or "
                                 "classify request may give instead of a string with {}")
    limits: LimitsPublic


@router.get("", response_model=ModelsPublic)
def list_models(settings: SettingsDep, _principal: Reader):
    allowed = settings.allowed_base_models
    return ModelsPublic(
        data=[ModelPublic(id=m, default=i == 0) for i, m in enumerate(allowed)],
        templates=[*DATASET_TEMPLATES, *TEMPLATE_ENSEMBLES],
        limits=LimitsPublic(max_epochs=settings.max_epochs, max_images=settings.max_images,
                            max_classes=settings.max_classes,
                            max_request_bytes=settings.max_request_bytes,
                            max_image_pixels=settings.max_image_pixels))
