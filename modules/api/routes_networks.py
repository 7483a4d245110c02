"""Textual-inversion embeddings, hypernetworks and LoRAs: A1111's list and refresh routes."""

from __future__ import annotations

from fastapi import APIRouter

from modules.api.schemas import EmbeddingItem, EmbeddingsResponse, HypernetworkItem, LoraItem


def _embedding_item(embedding) -> EmbeddingItem:
    return EmbeddingItem(step=embedding.step, sd_checkpoint=embedding.sd_checkpoint,
                         sd_checkpoint_name=embedding.sd_checkpoint_name, shape=embedding.shape,
                         vectors=embedding.vector_count)


def build_router(context) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["networks"])

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> EmbeddingsResponse:
        """`loaded`: the embeddings the current checkpoint can use; `skipped`: those made for another
        text-encoder width (the reasons are in the log). With no checkpoint loaded none is usable."""
        from modules.networks.activation import embedding_widths

        database = context.embeddings
        database.refresh()
        model = context.models.current()
        if model is None:
            loaded, skipped = {}, database.embeddings
        else:
            fitting = database.for_model(embedding_widths(model))
            loaded = fitting.loaded
            skipped = {name: database.get(name) for name in fitting.skipped}
        return EmbeddingsResponse(
            loaded={name: _embedding_item(e) for name, e in loaded.items()},
            skipped={name: _embedding_item(e) for name, e in skipped.items() if e is not None},
        )

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        context.embeddings.refresh(force=True)

    @router.get("/hypernetworks", response_model=list[HypernetworkItem])
    def hypernetworks() -> list[HypernetworkItem]:
        registry = context.hypernetworks
        registry.refresh()  # a folder listing; A1111's list is as fresh as its last UI refresh
        return [HypernetworkItem(name=name, path=str(registry.path(name))) for name in registry.names()]

    @router.get("/loras", response_model=list[LoraItem])
    def loras() -> list[LoraItem]:
        return [LoraItem(name=info.name, alias=info.alias, path=str(info.path), metadata=dict(info.metadata))
                for info in context.loras.list()]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        context.loras.refresh()

    return router
