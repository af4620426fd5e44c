"""The hand-kept client reads every field the gateway's spec answers with, and no other:
a field added to (or renamed in) the API fails here until the client follows."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from gateway.api import spec
from partner_client import models

PAIRS = {
    models.Record: "RecordOut",
    models.BlueprintIds: "BlueprintIds",
    models.TimelineStep: "TimelineStep",
    models.PendingJob: "PendingJob",
    models.ReceivedAudio: "ReceivedAudioOut",
    models.Session: "SessionOut",
    models.SessionSummary: "SessionSummary",
    models.SessionPage: "SessionPage",
    models.Artifact: "ArtifactOut",
    models.Artifacts: "ArtifactsOut",
    models.Room: "RoomOut",
    models.Problem: "Problem",
    models.Callback: "PartnerCallback",
}


@pytest.mark.parametrize(("model", "schema_name"), PAIRS.items(), ids=lambda x: str(x))
def test_client_model_matches_the_spec(model: type[BaseModel], schema_name: str) -> None:
    schema = spec.document()["components"]["schemas"][schema_name]
    assert set(model.model_fields) == set(schema["properties"]), schema_name
