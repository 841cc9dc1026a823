"""Local stand-ins for the services the project talks to, for tests, benchmarks and
``review serve``: an OpenAI-compatible toy server, a Hub contract server, an Argilla stack
and process helpers. Pipelines never import this package."""
