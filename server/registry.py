"""ModelRegistry (``app.state.models``): every model this server serves, by name.

Generation models (one AsyncEngine + one OpenAIServing each, in ``--model`` order; the first
is the default) and at most one embedding model. Names are known from the settings before
anything loads, so a known model that is still loading is a 503 and only a truly unknown
name is a 404.
"""
from __future__ import annotations

from collections.abc import Callable

from server import protocol as p
from server.embeddings import EmbeddingServing
from server.errors import APIError, bad_request
from server.serving import OpenAIServing


class ModelRegistry:
    """``get_default`` reads the default model's serving from where older code keeps it
    (``app.state.serving``); the others live in ``servings[1:]``."""

    def __init__(self, generation_names: list[list[str]], embedding_names: list[str] | None = None,
                 get_default: Callable[[], OpenAIServing | None] | None = None) -> None:
        self.generation_names = generation_names
        self.embedding_names = embedding_names or []
        self._servings: list[OpenAIServing | None] = [None] * len(generation_names)
        self.get_default = get_default or (lambda: self._servings[0])
        self.embeddings: EmbeddingServing | None = None

    def set_serving(self, i: int, serving: OpenAIServing) -> None:
        self._servings[i] = serving

    @property
    def servings(self) -> list[OpenAIServing | None]:
        """One per --model, in order; None while that model loads."""
        return [self.get_default(), *self._servings[1:]]

    @property
    def is_loaded(self) -> bool:
        return all(s is not None for s in self.servings) and (self.embeddings is not None or not self.embedding_names)

    def _loaded(self) -> list:
        return [s for s in [*self.servings, self.embeddings] if s is not None]

    def _find(self, model: str) -> int | None:
        """Which --model answers to ``model``: a loaded serving's own names, else the configured ones."""
        for i, serving in enumerate(self.servings):
            if model in (serving.served_model_names if serving is not None else self.generation_names[i]):
                return i
        return None

    async def is_healthy(self) -> bool:
        """Every model loaded so far answers (its engine loop, or the embedder's thread)."""
        for serving in self._loaded():
            if not await serving.is_healthy():
                return False
        return True

    # ----- lookups -----

    def _unknown(self, model: str) -> APIError:
        return APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")

    def _loading(self, model: str) -> APIError:
        return APIError(503, f"The model '{model}' is still loading; try again shortly.")

    def generation_serving(self, model: str | None) -> OpenAIServing:
        """The serving for /v1/completions and /v1/chat/completions; None means the default model."""
        i = 0 if model is None else self._find(model)
        if i is not None:
            serving = self.servings[i]
            if serving is None:
                raise self._loading(model or self.generation_names[0][0])
            return serving
        if model in self.embedding_names:
            raise bad_request(f"The model '{model}' is an embedding model: it serves /v1/embeddings only, "
                              f"not completions or chat.", param="model", code="model_not_supported")
        raise self._unknown(model)

    def embedding_serving(self, model: str) -> EmbeddingServing:
        if model in self.embedding_names:
            if self.embeddings is None:
                raise self._loading(model)
            return self.embeddings
        if self._find(model) is not None:
            hint = f" (this server's is '{self.embedding_names[0]}')" if self.embedding_names else \
                " (start the server with --embedding-model to serve one)"
            raise bad_request(f"The model '{model}' generates text; it has no embeddings. Use an embedding "
                              f"model{hint}.", param="model", code="model_not_supported")
        raise self._unknown(model)

    # ----- /v1/models -----

    def list_models(self) -> p.ModelList:
        if not self.is_loaded:
            raise APIError(503, "The models are still loading; try again shortly.")
        cards = [card for serving in self.servings for card in serving.list_models().data]
        if self.embeddings is not None:
            cards += [self.embeddings.model_card(name) for name in self.embedding_names]
        return p.ModelList(data=cards)

    def model_card(self, model: str) -> p.ModelCard:
        if self._find(model) is not None:
            return self.generation_serving(model).model_card(model)
        if model in self.embedding_names:
            return self.embedding_serving(model).model_card(model)
        raise self._unknown(model)


class CombinedStats:
    """The engines' ``stats()`` summed, for the Prometheus gauges and counters (not labelled
    by model: one scrape sums the KV blocks, running and waiting sequences of every model)."""

    def __init__(self, engines: list) -> None:
        self.engines = engines

    def stats(self) -> dict:
        total: dict = {}
        for engine in self.engines:
            for key, value in engine.stats().items():
                if isinstance(value, (int, float)):
                    total[key] = total.get(key, 0) + value
        return total
