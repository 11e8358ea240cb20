"""`reason-then-ground:VLM_CKPT,SEGMENTER_SPEC` — a vision-language model names the part, a segmenter masks it.

e.g. `reason-then-ground:Qwen/Qwen2.5-VL-7B-Instruct,clipseg:CIDAS/clipseg-rd64-refined` or
`reason-then-ground:llava-hf/llava-1.5-7b-hf,grounded-sam:IDEA-Research/grounding-dino-base,facebook/sam-vit-huge`.
VLM_CKPT ends at the first comma; the rest is any other model spec (it may hold commas itself).

Step 1, reasoning (any `AutoModelForImageTextToText` checkpoint whose processor has a chat template): one user
    turn holding the image and `REASONING_PROMPT` filled with the instruction, rendered by the processor's chat
    template with the generation prompt; greedy decoding (`do_sample=False`) of at most `max_new_tokens`
    (default 32) tokens; a batch is left-padded.
Step 2, parsing (`parse_part_phrase`): the first "<part> of [the] <object>" in the answer, case-insensitive,
    words of letters/digits/'/-, at most 3 words each side, stopping at determiners, pronouns, auxiliaries and
    clause words ("You should hold the HANDLE of the kettle in the image." -> ("handle", "kettle")).
    The segmenter gets "<part> of the <object>" (the ORPS name form). When the answer holds no such phrase,
    the segmenter gets the answer's first line (the VLM's own words), or the instruction when that is empty.
Step 3, grounding: the phrase goes to the segmenter, with the segmenter's own prompt, threshold and
    resolution handling (see its module).

Kept with each prediction (`predictions/phrases.jsonl`): the answer, the phrase sent, the parsed part and
object. The reasoning step is scored on its own (`reasoning_scores`): how often an answer parses, and how often
the parsed part, object, and both match the ground truth exactly (lower case, `_` as space, spaces collapsed).
"""

import re

from .base import (
    Adapter,
    check_batch,
    checked_checkpoint,
    dtype_options,
    load_pretrained,
    prepare_model,
    require_argument,
    resolve_dtype,
    to_device,
)

REASONING_PROMPT = (
    "{instruction}\n"
    'Answer with one short phrase of the form "<part> of the <object>" naming the object part to use, '
    "and nothing else."
)
DEFAULT_MAX_NEW_TOKENS = 32

_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]")
_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
_MARKUP = re.compile(r"[*`#\"\u201c\u201d]")  # Markdown emphasis and quotes around the phrase
_DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "their", "his", "her", "my", "your", "our"}
_PART_STOP = _DETERMINERS | {
    "is", "are", "was", "be", "i", "you", "we", "it", "should", "would", "could", "can", "will", "to", "use",
    "using", "answer", "part", "parts", "which", "what", "where", "here", "there", "on", "in", "at", "by", "with",
    "and", "or", "of", "for", "one", "some", "any", "all", "each", "both", "either", "none",
}  # fmt: skip
# "can" ends an object only before "be" (see parse_part_phrase): "trash can", "watering can" are objects.
_OBJECT_STOP = {
    "in", "on", "at", "that", "which", "who", "to", "for", "with", "and", "or", "so", "because", "is", "are", "was",
    "from", "by", "of", "it", "where", "when", "while", "as", "you", "if", "used", "could", "would", "should",
    "will", "shown", "here", "there", "be",
}  # fmt: skip
MAX_WORDS = 3


def normalize_name(name: str | None) -> str:
    """Lower case, `_` as space, spaces collapsed: the form in which names are compared."""
    return " ".join((name or "").replace("_", " ").lower().split())


def parse_part_phrase(answer: str) -> tuple | None:
    """`(part, object)` from the first "<part> of [the] <object>" in `answer`, lower case; None when there is none."""
    tokens = _TOKEN.findall(normalize_name(_MARKUP.sub(" ", answer)))
    for index, token in enumerate(tokens):
        if token != "of":
            continue
        part = []
        back = index - 1
        while back >= 0 and len(part) < MAX_WORDS and _WORD.fullmatch(tokens[back]) and tokens[back] not in _PART_STOP:
            part.insert(0, tokens[back])
            back -= 1
        ahead = index + 1
        while ahead < len(tokens) and tokens[ahead] in _DETERMINERS:
            ahead += 1
        obj = []
        while (
            ahead < len(tokens)
            and len(obj) < MAX_WORDS
            and _WORD.fullmatch(tokens[ahead])
            and tokens[ahead] not in _OBJECT_STOP
            and tokens[ahead] not in _DETERMINERS
            and tokens[ahead : ahead + 2] != ["can", "be"]
        ):
            obj.append(tokens[ahead])
            ahead += 1
        if part and obj:
            return " ".join(part), " ".join(obj)
    return None


def phrase_for_segmenter(answer: str, instruction: str) -> tuple:
    """`(phrase, parsed)`: "<part> of the <object>" if the answer parses, else its first line, else the instruction."""
    parsed = parse_part_phrase(answer)
    if parsed is not None:
        return f"{parsed[0]} of the {parsed[1]}", parsed
    first_line = next((line.strip() for line in answer.splitlines() if line.strip()), "")
    return (first_line if _WORD.search(first_line.lower()) else instruction), None


def reasoning_scores(records: list) -> dict:
    """Exact-match rates of the parsed part/object against the truth, over records holding `answer_part`,
    `answer_object`, `part`, `object` (and `instruction_type`, for the per-type rows)."""

    def rates(subset):
        count = len(subset)
        part = [normalize_name(r["answer_part"]) == normalize_name(r["part"]) for r in subset]
        obj = [normalize_name(r["answer_object"]) == normalize_name(r["object"]) for r in subset]
        return {
            "samples": count,
            "parsed": sum(r["answer_part"] is not None for r in subset) / count,
            "part": sum(part) / count,
            "object": sum(obj) / count,
            "part_and_object": sum(p and o for p, o in zip(part, obj)) / count,
        }

    if not records:
        return {}
    scores = {"all": rates(records)}
    for kind in sorted({r["instruction_type"] for r in records if "instruction_type" in r}):
        scores[kind] = rates([r for r in records if r.get("instruction_type") == kind])
    return scores


class VisionLanguageReasoner:
    """Asks an image-text-to-text model `REASONING_PROMPT` about each (image, instruction); returns its answers."""

    def __init__(self, model, processor, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, prompt=REASONING_PROMPT):
        if getattr(processor, "chat_template", None) is None:
            raise ValueError("the reasoning model's processor has no chat template to build its prompt with")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model, self.processor = model, processor
        self.max_new_tokens, self.prompt = int(max_new_tokens), prompt
        # Decoder-only generation continues from the last position: pad on the left.
        self.processor.tokenizer.padding_side = "left"

    def prompts(self, instructions: list) -> list:
        return [
            self.processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image"},
                            {"type": "text", "text": self.prompt.format(instruction=instruction)},
                        ],
                    }
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            for instruction in instructions
        ]

    def __call__(self, images: list, instructions: list) -> list:
        import torch

        inputs = self.processor(
            images=[image.convert("RGB") for image in images],
            text=self.prompts(instructions),
            padding=True,
            return_tensors="pt",
        )
        inputs = to_device(inputs, self.model.device, self.model.dtype)
        tokenizer = self.processor.tokenizer
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_token_id
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return [answer.strip() for answer in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


class ReasonThenGroundAdapter(Adapter):
    """`reasoner(images, instructions) -> answers`, then `segmenter.predict(images, phrases)`."""

    extras_name = "phrases"

    def __init__(self, reasoner, segmenter: Adapter, *, name: str = "reason-then-ground"):
        self.reasoner, self.segmenter, self.name = reasoner, segmenter, name

    def predict_with_extras(self, images, instructions):
        check_batch(images, instructions)
        if not images:
            return [], []
        answers = self.reasoner(images, list(instructions))
        phrases, extras = [], []
        for answer, instruction in zip(answers, instructions):
            phrase, parsed = phrase_for_segmenter(answer, instruction)
            phrases.append(phrase)
            extras.append(
                {
                    "answer": answer,
                    "phrase": phrase,
                    "answer_part": parsed[0] if parsed else None,
                    "answer_object": parsed[1] if parsed else None,
                }
            )
        masks, segmenter_extras = self.segmenter.predict_with_extras(images, phrases)
        if segmenter_extras:
            extras = [{**own, **theirs} for own, theirs in zip(extras, segmenter_extras)]
        return masks, extras

    def predict(self, images, instructions):
        return self.predict_with_extras(images, instructions)[0]

    def summarize_extras(self, records: list) -> dict:
        return {"reasoning": reasoning_scores(records)}


def _reason_then_ground(argument, *, device=None, dtype=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    form = "reason-then-ground:VLM_CHECKPOINT,SEGMENTER_SPEC"
    vlm_checkpoint, _, segmenter_spec = require_argument("reason-then-ground", argument, form).partition(",")
    vlm_checkpoint, segmenter_spec = vlm_checkpoint.strip(), segmenter_spec.strip()
    if not vlm_checkpoint or not segmenter_spec:
        raise ValueError(f"reason-then-ground needs a VLM checkpoint and a segmenter spec: {form} (got {argument!r})")
    if segmenter_spec.partition(":")[0] == "reason-then-ground":
        raise ValueError("reason-then-ground's segmenter cannot itself be reason-then-ground")
    vlm_checkpoint = checked_checkpoint(vlm_checkpoint, "reasoning VLM")  # refuse a missing one before loading
    dtype = resolve_dtype(dtype)
    from .registry import load_adapter  # the segmenter is any adapter; the registry imports this module lazily

    segmenter = load_adapter(segmenter_spec, device=device, dtype=dtype)
    model = load_pretrained(
        AutoModelForImageTextToText.from_pretrained, vlm_checkpoint, "reasoning VLM", **dtype_options(dtype)
    )
    processor = load_pretrained(AutoProcessor.from_pretrained, vlm_checkpoint, "reasoning VLM")
    reasoner = VisionLanguageReasoner(prepare_model(model, device, dtype), processor, max_new_tokens=max_new_tokens)
    return ReasonThenGroundAdapter(reasoner, segmenter, name=f"reason-then-ground:{argument}")
