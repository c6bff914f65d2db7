"""zscir's instruction templates for the language model, one per generation style, each recorded by sha256.

The facts follow CIReVL (Karthik et al., ICLR 2024; its ``src/prompts.py`` and example runs): one prompt per
benchmark kind — a *contextual* prompt for CIRR (describe only the changed image, short, examples of
real-life pairs), a *structural* prompt for CIRCO (examples by kind of change: cardinality, addition,
negation, direct addressing, compare & change, comparative, conjunction, spatial relations and background,
viewpoint), a *fashion* prompt for FashionIQ (the same kinds, garment examples); the caption and the
instruction are appended as ``Image Content:`` and ``Instruction:`` lines and the answer is read from the
line that starts with ``Edited Description:`` (the instruction itself when no such line comes back).
FashionIQ's two relative captions form one instruction, ``"c1 and c2"`` with ``.?, `` stripped
(:func:`instruction_of`). The wording below is zscir's own. CVSI's second question (the objects most likely
added) is :data:`ADDED_OBJECTS`.

A benchmark family names its style (``Family.generation_style``); methods look it up here, never by name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ANSWER_PREFIX = "Edited Description:"


@dataclass(frozen=True)
class Template:
    name: str
    text: str            # with {caption} and {instruction}
    answer_prefix: str = ANSWER_PREFIX

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def fill(self, caption: str, instruction: str) -> str:
        return self.text.format(caption=caption, instruction=instruction)

    def parse(self, answer: str, instruction: str) -> str:
        """The text after the first line that starts with the answer prefix; else the answer itself when it is
        one line (released files store the bare description); else the instruction (CIReVL's fallback)."""
        lines = [line.strip() for line in answer.strip().splitlines()]
        for line in lines:
            if line.startswith(self.answer_prefix):
                return line[len(self.answer_prefix):].strip() or instruction
        return lines[0] if len(lines) == 1 and lines[0] else instruction

    def describe(self) -> dict:
        return {"name": self.name, "text": self.text, "sha256": self.sha256, "answer_prefix": self.answer_prefix}


_HEAD = ("You rewrite image descriptions. You get the description of an image after \"Image Content:\" and a "
         "requested change after \"Instruction:\". Answer with one line that starts with \"Edited Description:\" "
         "and describes the image after the change.\n")
_TAIL = "\nImage Content: {caption}\nInstruction: {instruction}\n"

CONTEXTUAL = Template("zscir-contextual-v1", _HEAD + (
    "Describe only the changed image, never the original one. Be brief and add nothing the instruction does not "
    "imply. For example:\n\n"
    "Image Content: two cats asleep on a red sofa\n"
    "Instruction: only one cat, and it is awake on the floor\n"
    "Edited Description: a cat awake on the floor\n\n"
    "Image Content: a bowl of oranges on a kitchen table\n"
    "Instruction: the target shows a basket of apples outdoors\n"
    "Edited Description: a basket of apples outdoors\n") + _TAIL)

STRUCTURAL = Template("zscir-structural-v1", _HEAD + (
    "The change may be of any kind: how many (cardinality), something added, something removed (negation), one "
    "object singled out (direct addressing), one thing swapped for another (compare and change), more or less of "
    "a quality (comparative), several changes at once (conjunction), where things are or what is behind them "
    "(spatial relations and background), or the point of view. Keep the description as short as the change "
    "allows and invent nothing. For example:\n\n"
    "Image Content: a boat on a calm lake\n"
    "Instruction: make it three boats\n"
    "Edited Description: three boats on a calm lake\n\n"
    "Image Content: a red car parked in front of a house with trees\n"
    "Instruction: remove the trees and show it from above\n"
    "Edited Description: a red car in front of a house seen from above\n") + _TAIL)

FASHION = Template("zscir-fashion-v1", _HEAD + (
    "The image shows a garment; the instruction says how the wanted garment differs (colour, pattern, cut, "
    "length, sleeves, fabric, style). Describe the wanted garment in one short line and invent nothing. For "
    "example:\n\n"
    "Image Content: a long blue dress with short sleeves\n"
    "Instruction: is shorter and is green with no sleeves\n"
    "Edited Description: a short green sleeveless dress\n\n"
    "Image Content: a white t-shirt with a small logo\n"
    "Instruction: has a large graphic print and is darker\n"
    "Edited Description: a dark t-shirt with a large graphic print\n") + _TAIL)

ADDED_OBJECTS = Template("zscir-added-objects-v1", (
    "You get the description of an image after \"Image Content:\" and a requested change after \"Instruction:\". "
    "Name the objects the change most likely adds to the image, as short noun phrases with the details the "
    "instruction gives, separated by commas. Answer with one line that starts with \"Objects most likely added:\"."
    "\nFor example:\n\n"
    "Image Content: a dog on a beach\n"
    "Instruction: add a child throwing a red ball\n"
    "Objects most likely added: a child, a red ball\n") + _TAIL, answer_prefix="Objects most likely added:")

# generation style (Family.generation_style) -> the edit template CIReVL-style methods use
EDIT_TEMPLATES: dict[str, Template] = {"contextual": CONTEXTUAL, "structural": STRUCTURAL, "fashion": FASHION}


def edit_template(style: str) -> Template:
    return EDIT_TEMPLATES.get(style, STRUCTURAL)


def instruction_of(captions: tuple[str, ...] | list[str]) -> str:
    """The one instruction the language model gets: the caption, or two captions as ``"c1 and c2"`` (each
    stripped of ``.?, ``), as CIReVL joins FashionIQ's."""
    captions = list(captions)
    if len(captions) == 1:
        return captions[0]
    return " and ".join(c.strip(".?, ") for c in captions)
