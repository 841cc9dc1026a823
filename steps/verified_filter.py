"""Keep the verified traces of an inversion step; every other row is kept with its reason."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from distilabel.steps import Step, StepInput
from pydantic import Field

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput


class KeepVerified(Step):
    """A filter after ``InvertTraces``: a row goes on when its ``inversion_status`` is one
    of ``keep``; the others are appended, with their status and reason, to
    ``excluded_path`` (a JSONL file), so a filtered row is never lost silently.

    Attributes:
        keep: the statuses that go on ("verified"; add "unverifiable" to keep rows whose
            target answer could not be read).
        excluded_path: where the other rows go (None: they are only counted in the log).

    Input columns:
        - inversion_status (str), inversion_reason (str)

    Output columns:
        - the input rows with a kept status, unchanged.

    Examples:
        ```python
        invert >> KeepVerified(excluded_path="out/excluded.jsonl")
        ```
    """

    keep: list[str] = Field(default_factory=lambda: ["verified"])
    excluded_path: Optional[str] = None

    @property
    def inputs(self) -> "StepColumns":
        return ["inversion_status", "inversion_reason"]

    @property
    def outputs(self) -> "StepColumns":
        return []

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        kept = [r for r in inputs if r.get("inversion_status") in self.keep]
        dropped = [r for r in inputs if r.get("inversion_status") not in self.keep]
        if dropped and self.excluded_path:
            p = Path(self.excluded_path)
            p.parent.mkdir(parents=True, exist_ok=True)
            # a rerun (or a resumed run) meets the same rows again: each id is written once
            seen = set()
            if p.exists():
                for line in p.read_text(encoding="utf-8").splitlines():
                    try:
                        seen.add(json.loads(line).get("id"))
                    except ValueError:
                        continue  # a line cut by a crash
            with p.open("a", encoding="utf-8") as f:
                for r in dropped:
                    if r.get("id") is None or r.get("id") not in seen:
                        f.write(json.dumps(r, default=str, ensure_ascii=False) + "\n")
        if dropped:
            self._logger.info(f"{self.name}: {len(dropped)} of {len(inputs)} rows excluded "
                              f"({', '.join(sorted({str(r.get('inversion_status')) for r in dropped}))})")
        yield kept
