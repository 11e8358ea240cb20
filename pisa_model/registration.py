"""Register PISA with transformers' Auto classes and pipeline registry inside this process.

Saved checkpoints load anywhere with `trust_remote_code=True` (their config carries
`auto_map` and `custom_pipelines`). Where this package is installed,
`register_pisa()` lets them load without it, from this package's code:

    from pisa_model import register_pisa
    register_pisa()
    AutoModel.from_pretrained(folder); pipeline("instruction-part-segmentation", model=folder)
"""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_pisa import PisaConfig
from .modeling_pisa import PisaForPartSegmentation
from .pipeline_pisa import PIPELINE_TASK, PisaPartSegmentationPipeline
from .processing_pisa import PisaProcessor


def register_pisa() -> None:
    """Idempotent."""
    AutoConfig.register(PisaConfig.model_type, PisaConfig, exist_ok=True)
    AutoModel.register(PisaConfig, PisaForPartSegmentation, exist_ok=True)
    AutoProcessor.register(PisaConfig, PisaProcessor, exist_ok=True)
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=PisaPartSegmentationPipeline, pt_model=AutoModel, type="multimodal"
    )
