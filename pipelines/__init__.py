"""The pipelines: one module per stage, run by the one stage runner (``stage.Stage``).

One stage, its names (``STAGES``): the CLI verb, the pipeline module (the verb with
``_``), the distilabel step class that calls its model, the step's module, and the
folder it writes under ``output.dir``.

| stage (CLI verb)      | pipeline module          | model step(s)                           | output folder   |
|-----------------------|--------------------------|-----------------------------------------|-----------------|
| query-target          | query_target.py          | steps/query_target.py: QueryTarget      | target_query/   |
| build-inverter-data   | build_inverter_data.py   | steps/surrogate_generation.py: GenerateSurrogateTraces, steps/summarize.py: CompressTraces | inverter_data/ |
| invert                | invert.py                | steps/inversion.py: InvertTraces        | inversion/      |
| student-data          | student_data.py          | steps/student_format.py: FormatStudentSFT (no model) | student_data/ |
"""

STAGES = {
    "query-target": {"module": "query_target", "steps": ["QueryTarget", "SummarizeTargetTraces"],
                     "folder": "target_query"},
    "build-inverter-data": {"module": "build_inverter_data", "steps": ["GenerateSurrogateTraces", "CompressTraces",
                                                                       "FormatInverterSFT"],
                            "folder": "inverter_data"},
    "invert": {"module": "invert", "steps": ["InvertTraces"], "folder": "inversion"},
    "student-data": {"module": "student_data", "steps": ["FormatStudentSFT", "GenerateSurrogateTraces"],
                     "folder": "student_data"},
}
