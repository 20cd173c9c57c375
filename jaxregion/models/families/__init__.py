"""One file per model family: its table (HF names, logical axes, roles), its config mapping
and its NNX modules. Every module here is registered (see :mod:`jaxregion.models.registry`)."""
