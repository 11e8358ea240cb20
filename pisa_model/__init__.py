"""PISA on the Hugging Face stack: config, model, processor, pipeline, training and evaluation.

    from pisa_model import PisaForPartSegmentation
    model = PisaForPartSegmentation.from_pretrained(folder)          # its processor loads from the same folder
    masks = model.predict(images, instructions)                      # bool (H, W) arrays at each image's size

Names are imported on first use, so that `python -m pisa_model.<tool>` and the
torch-free parts of the package do not pay for transformers' model imports.
"""

from instructpart_dataset.toolbox.extras import lazy_exports

_EXPORTS = {
    "PisaConfig": "configuration_pisa",
    "PisaForPartSegmentation": "modeling_pisa",
    "PisaPreTrainedModel": "modeling_pisa",
    "PisaSegmentationOutput": "modeling_pisa",
    "PisaProcessor": "processing_pisa",
    "PisaPartSegmentationPipeline": "pipeline_pisa",
    "PIPELINE_TASK": "pipeline_pisa",
    "register_pisa": "registration",
}

__all__ = [
    "PIPELINE_TASK",
    "PisaConfig",
    "PisaForPartSegmentation",
    "PisaPartSegmentationPipeline",
    "PisaPreTrainedModel",
    "PisaProcessor",
    "PisaSegmentationOutput",
    "register_pisa",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
