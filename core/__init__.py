"""trace-inversion: recover reasoning traces hidden by a target model and train on them.

The package is one namespace built from the repository's top-level folders:

- ``trace_inversion`` (``core/``): typed run configuration, the request cache, the toy
  world, tiny offline model builders, local test servers and the CLI.
- ``trace_inversion.steps`` (``steps/``): distilabel steps, one stage per file.
- ``trace_inversion.pipelines`` (``pipelines/``): pipelines chaining the steps.
- ``trace_inversion.hub_cards`` (``hub_cards/``): dataset cards and publishing.
- ``trace_inversion.recipes`` (``recipes/``): ``trl sft`` YAML recipes.

Heavy dependencies (torch, vLLM, transformers, distilabel) are imported lazily where
they are used, so ``trace-inversion --help`` and config validation stay fast.
"""

__version__ = "0.1.0"
