"""trace-inversion: recover reasoning traces hidden by a target model and train on them.

The package is one namespace: the folder ``trace_inversion/`` in layers, plus the
design card's top-level folders mapped in as subpackages (``pyproject.toml``).

Layers (``trace_inversion/``), each importing only the ones above it:

- ``config``: the typed run configuration (``trace_inversion.config``), path safety,
  secret scrubbing; ``errors``: the one user-error base class.
- ``data``: loading and validating problems; dataset folders and parquet shards.
- ``models``: every backend as a distilabel ``LLM``, and ``CachedModel``, the one path
  from any LLM to the request cache (``models.cache``); the Batch API.
- ``scoring``: answer matching, trace filters, verifiers, overlap metrics, style report.
- ``toy``: the toy world and tiny offline models.
- ``training``: TRL recipes runner (``sft``) and evaluation.
- ``local_services``: stand-ins for the services (OpenAI-wire toy server, Hub contract
  server, Argilla stack) for tests, benchmarks and ``review serve``; pipelines never
  import it.
- ``prompts`` (templates), ``console``, ``cli`` (assembles each command's parser).

Mapped folders: ``steps/`` -> ``trace_inversion.steps`` (distilabel steps, one stage
per file), ``pipelines/`` -> ``trace_inversion.pipelines`` (one pipeline per stage, the
stage runner, the demo), ``hub_cards/`` -> ``trace_inversion.hub_cards`` (cards,
releases, Argilla review), ``recipes/`` -> ``trace_inversion.recipes`` (``trl sft``
YAML recipes).

Heavy dependencies (torch, vLLM, transformers, distilabel) are imported lazily where
they are used, so ``trace-inversion --help`` and config validation stay fast.
"""

__version__ = "0.1.0"
