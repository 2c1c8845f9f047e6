"""The dense retriever: settings (config), backbone loading and cutting (backbone), the
sentence-transformers directory format (st_format) and the bi-encoder itself (model)."""

from dreamir.retriever.config import CONFIG_FILE, LoraSettings, Pooling, RetrieverConfig
from dreamir.retriever.model import Retriever, pool

__all__ = ["CONFIG_FILE", "LoraSettings", "Pooling", "Retriever", "RetrieverConfig", "pool"]
