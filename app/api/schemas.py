"""Request and response bodies of the upload API, as the contract fixes them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


class InitBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    main_service_file_id: int = Field(gt=0, lt=2**63)
    original_file_name: str = Field(min_length=1, max_length=255)
    total_size: int | None = Field(default=None, ge=0, lt=2**63, description="bytes")
    total_chunks: int | None = Field(default=None, ge=1)
    chunk_size: int | None = Field(default=None, ge=1, description="bytes")
    sha256: Sha256Hex | None = None
    content_type: str | None = Field(default=None, max_length=255)


class CompleteBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    upload_session_id: uuid.UUID
    total_chunks: int = Field(ge=1)
    main_service_file_id: int = Field(gt=0, lt=2**63)
    sha256: Sha256Hex | None = None


class Envelope(BaseModel):
    status: Literal["success"] = "success"
    message: str
    data: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    code: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    status: Literal["error"] = "error"
    message: str
    error: ErrorDetail
