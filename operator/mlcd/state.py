"""The local record of a pipeline: what is served and the last runs (the operator keeps the
same in the resource's status)."""

from __future__ import annotations

import pathlib

from pydantic import Field

from mlcd.domain.records import RunRecord, ServingRecord
from mlcd.domain.spec import Model


class PipelineState(Model):
    serving: ServingRecord | None = None
    runs: list[RunRecord] = Field(default_factory=list)
    dataset_version: str | None = None

    @classmethod
    def load(cls, folder: pathlib.Path) -> PipelineState:
        path = folder / "state.json"
        if not path.is_file():
            return cls()
        return cls.model_validate_json(path.read_text())

    def save(self, folder: pathlib.Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".state.json.tmp"
        tmp.write_text(self.model_dump_json(by_alias=True, indent=2))
        tmp.replace(folder / "state.json")

    def with_run(self, record: RunRecord, limit: int) -> PipelineState:
        runs = [r for r in self.runs if r.id != record.id] + [record]
        return self.model_copy(update={"runs": runs[-limit:]})
