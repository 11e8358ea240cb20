"""`reason-then-ground:VLM,SEGMENTER_SPEC` — a vision-language model names the part, a segmenter masks it.

e.g. `reason-then-ground:Qwen/Qwen2.5-VL-7B-Instruct,clipseg:CIDAS/clipseg-rd64-refined` or
`reason-then-ground:llava-hf/llava-1.5-7b-hf,grounded-sam:IDEA-Research/grounding-dino-base,facebook/sam-vit-huge`.
VLM (a checkpoint, or `api:MODEL@BASE_URL`, e.g. `reason-then-ground:api:gpt-4o@https://api.openai.com/v1,clipseg:
CIDAS/clipseg-rd64-refined`) ends at the first comma; the rest is any other model spec (it may hold commas itself).

Step 1, reasoning (any `AutoModelForImageTextToText` checkpoint whose processor has a chat template, or any
    OpenAI-compatible endpoint as `api:MODEL@BASE_URL`, see `api.py`): the image and the phrase prompt of the row's
    task form (`prompts.PHRASE_PROMPTS`: TRPS instruction, ORPS question, ORPS name; recorded with a sha256 in
    provenance) filled with the instruction; a local model renders one user turn with its chat template and the
    generation prompt and decodes greedily at most `max_new_tokens` (default 32) tokens (`vlm.py`).
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

import numpy as np

from . import prompts as prompt_table
from .api import API_OPTIONS
from .base import Adapter, check_batch, require_argument, resolve_dtype

REASONING_PROMPT = prompt_table.PHRASE_PROMPTS["trps"]

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


class PhraseReasoner:
    """Asks a VLM (`vlm.LocalVLM` or `api.ApiVLM`) the phrase prompt of each row's task form; returns its answers."""

    takes_instruction_types = True

    def __init__(self, vlm, prompts: dict | None = None):
        self.vlm = vlm
        self.prompts = dict(prompt_table.PHRASE_PROMPTS if prompts is None else prompts)

    def __call__(self, images: list, instructions: list, instruction_types=None) -> list:
        kinds = list(instruction_types) if instruction_types is not None else [None] * len(images)
        prompts = [
            prompt_table.fill(self.prompts[prompt_table.prompt_form(kind)], text, self.vlm.shown_size(image))
            for image, text, kind in zip(images, instructions, kinds)
        ]
        return self.vlm.ask(images, prompts)

    def record(self) -> dict:
        return {"prompts": prompt_table.prompt_record(self.prompts), "vlm": self.vlm.record()}

    def usage(self) -> dict:
        return self.vlm.usage()


class ReasonThenGroundAdapter(Adapter):
    """`reasoner(images, instructions) -> answers`, then `segmenter.predict(images, phrases)`.

    The answers are strings or `vlm.VLMAnswer`s; a reasoner with `takes_instruction_types` also gets each row's
    instruction type (its prompt's form). A row whose answer failed (an API row after its retries) gets an empty
    mask and `failed` in its extras, and is not sent to the segmenter."""

    extras_name = "phrases"
    takes_instruction_types = True

    def __init__(self, reasoner, segmenter: Adapter, *, name: str = "reason-then-ground", allow_failures=False):
        self.reasoner, self.segmenter, self.name = reasoner, segmenter, name
        self.allow_failures = bool(allow_failures)

    def predict_with_extras(self, images, instructions, instruction_types=None):
        check_batch(images, instructions)
        if not images:
            return [], []
        if getattr(self.reasoner, "takes_instruction_types", False):
            answers = self.reasoner(images, list(instructions), instruction_types)
        else:
            answers = self.reasoner(images, list(instructions))
        phrases, extras, answered = [], [], []
        for index, (answer, instruction) in enumerate(zip(answers, instructions)):
            error = getattr(answer, "error", None)
            text = getattr(answer, "text", answer)
            phrase, parsed = phrase_for_segmenter(text, instruction)
            record = {
                "answer": text,
                "phrase": phrase if error is None else None,
                "answer_part": parsed[0] if parsed else None,
                "answer_object": parsed[1] if parsed else None,
            }
            if error is not None:
                record["failed"] = error
            else:
                answered.append(index)
                phrases.append(phrase)
            extras.append(record)
        masks = [np.zeros((image.height, image.width), dtype=bool) for image in images]
        if answered:
            found, segmenter_extras = self.segmenter.predict_with_extras([images[i] for i in answered], phrases)
            for position, index in enumerate(answered):
                masks[index] = found[position]
                if segmenter_extras:
                    extras[index] = {**extras[index], **segmenter_extras[position]}
        return masks, extras

    def predict(self, images, instructions):
        return self.predict_with_extras(images, instructions)[0]

    def summarize_extras(self, records: list) -> dict:
        return {"reasoning": reasoning_scores(records)}

    def record(self) -> dict:
        return self.reasoner.record() if hasattr(self.reasoner, "record") else {}

    def usage(self) -> dict:
        return self.reasoner.usage() if hasattr(self.reasoner, "usage") else {}


def _reason_then_ground(
    argument, *, device=None, dtype=None, max_new_tokens: int | None = None, allow_failures: bool = False, **api_options
):
    from .vlm import load_vlm

    form = "reason-then-ground:VLM,SEGMENTER_SPEC (VLM: a checkpoint or api:MODEL@BASE_URL)"
    vlm_spec, _, segmenter_spec = require_argument("reason-then-ground", argument, form).partition(",")
    vlm_spec, segmenter_spec = vlm_spec.strip(), segmenter_spec.strip()
    if not vlm_spec or not segmenter_spec:
        raise ValueError(f"reason-then-ground needs a VLM checkpoint and a segmenter spec: {form} (got {argument!r})")
    if segmenter_spec.partition(":")[0] == "reason-then-ground":
        raise ValueError("reason-then-ground's segmenter cannot itself be reason-then-ground")
    if not vlm_spec.startswith("api:"):
        from .base import checked_checkpoint

        checked_checkpoint(vlm_spec, "reasoning VLM")  # refuse a missing one before loading the segmenter
    dtype = resolve_dtype(dtype)
    from .registry import load_adapter  # the segmenter is any adapter; the registry imports this module lazily

    segmenter = load_adapter(segmenter_spec, device=device, dtype=dtype)
    vlm = load_vlm(vlm_spec, device=device, dtype=dtype, max_new_tokens=max_new_tokens, api_options=api_options)
    return ReasonThenGroundAdapter(
        PhraseReasoner(vlm), segmenter, name=f"reason-then-ground:{argument}", allow_failures=allow_failures
    )


_reason_then_ground.accepted_options = API_OPTIONS  # the API VLM's options (api.py), passed through **api_options
