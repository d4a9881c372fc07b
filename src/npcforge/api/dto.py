"""Response and request shapes (pydantic) — the single source for validation and OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "processing", "succeeded", "failed"]
MAX_CURRENT_XML_CHARS = 131_072


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    regenerate: bool | None = None
    current_xml: str | None = Field(default=None, alias="currentXml", max_length=MAX_CURRENT_XML_CHARS)


class GenerateAccepted(BaseModel):
    job_id: UUID = Field(serialization_alias="jobId")
    status: Literal["queued"] = "queued"
    npc_id: UUID = Field(serialization_alias="npcId")
    submitted_at: datetime = Field(serialization_alias="submittedAt")


class JobErrorOut(BaseModel):
    code: str
    message: str


class JobStatusOut(BaseModel):
    job_id: UUID = Field(serialization_alias="jobId")
    npc_id: UUID = Field(serialization_alias="npcId")
    status: JobStatus
    xml: str | None
    content_size_bytes: int | None = Field(serialization_alias="contentSizeBytes")
    error: JobErrorOut | None
    updated_at: datetime = Field(serialization_alias="updatedAt")
    attempts: int
