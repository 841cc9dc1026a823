"""distilabel's leaf-step writer with columns whose type is only known in later chunks."""

from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, StepInput, step

from trace_inversion.pipelines.common import run_distiset


@step(inputs=["i"], outputs=["err", "usage"])
def LateTypes(inputs: StepInput):
    for row in inputs:
        # the first 100 rows (two write chunks) have no error and no usage: typed null
        late = row["i"] >= 100
        row["err"] = f"failed {row['i']}" if late else None
        row["usage"] = {"input_tokens": row["i"], **({"reasoning_tokens": 1} if row["i"] % 2 else {})} if late else None
    yield inputs


def test_late_typed_columns_survive_the_write_buffer(tmp_path):
    rows = [{"i": i} for i in range(230)]
    with Pipeline(name="late-types", cache_dir=str(tmp_path / "cache")) as p:
        LoadDataFromDicts(name="load", data=rows, batch_size=25) >> LateTypes(name="late", input_batch_size=25)
    out = run_distiset(p)["default"]["train"].to_list()
    assert len(out) == 230
    by_i = {r["i"]: r for r in out}
    assert by_i[5]["err"] is None and by_i[150]["err"] == "failed 150"
    assert by_i[151]["usage"] == {"input_tokens": 151, "reasoning_tokens": 1}
    assert by_i[150]["usage"]["input_tokens"] == 150 and by_i[150]["usage"].get("reasoning_tokens") is None
