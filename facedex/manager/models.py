"""Request and response bodies of the Index Manager (its OpenAPI schema, and what facedex.client returns)."""

from __future__ import annotations

import uuid
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from facedex.http import ErrorBody


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    list_id: uuid.UUID
    descriptor_version: int | None = Field(None, ge=1, le=2**31 - 1, description="Default: the deployment's.")


class TaskStatus(str, Enum):
    pending = "pending"
    indexing = "indexing"
    success = "success"
    failed = "failed"
    cancelled = "cancelled"


class TaskType(str, Enum):
    one_time = "one_time"
    background = "background"
    recovered = "recovered"  # recorded by the master for an index found in storage whose task Redis lost


class TaskOut(BaseModel):
    task_id: uuid.UUID
    list_id: uuid.UUID
    descriptor_version: int
    type: TaskType
    status: TaskStatus
    progress: float = Field(..., description="0 .. 1.")
    create_time: float = Field(..., description="Unix time; 0 when not reached yet (also start_time, end_time).")
    start_time: float
    end_time: float
    indexer: str = Field(..., description="Origin of the Indexer building it.")
    index_id: str = Field(..., description="The index being or already built; empty before dispatch.")
    count: int = Field(..., description="Faces in the built index.")
    error: ErrorBody | None = None
    warning: str = Field("", description="A successful build whose index missed the calibration targets (meta.json says which).")
    attempts: int = Field(0, description="Builds started; a lost build is retried up to indexing.max_attempts.")


class QueueOut(BaseModel):
    length: int
    task_ids: list[uuid.UUID] = Field(..., description="In the order they will run.")


class MasterOut(BaseModel):
    master: str | None = Field(..., description="Instance id holding the master lock, if any.")
    this_instance: str
    is_master: bool
