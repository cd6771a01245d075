"""``llmclf serve``: trained runs behind vLLM's and text-embeddings-inference's
classification APIs (``pip install 'llmclf[serve]'``)."""

from llmclf.serve.app import ServeOptions, create_app, load_runs, serve

__all__ = ["ServeOptions", "create_app", "load_runs", "serve"]
