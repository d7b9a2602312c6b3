"""LaViD's multiple-choice question sets (methods-spec 4.1): a versioned YAML/JSON schema, validated on load.

    format: edge-distill-mcq/1
    dataset: fashion_mnist
    description: greyscale 28x28 photos of clothing items
    placeholder: the class          # every question contains it; it is replaced by a class name. LaViD's
                                    # code: [class, the object] (every substring "class", then its dataset's
                                    # extra phrase: "the object", "the animal", "the breed", "the car")
    class_names: [T-shirt/top, Trouser, ...]
    questions:
      - question: How long are the sleeves of the class?
        options: [no sleeves, short sleeves, long sleeves, not a garment with sleeves, covers the legs]

Every question has the same number of options M; no option may name a class (that would leak the label
into the text the language model reads); the class list must equal the dataset's, in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.errors import ToolkitError

FORMAT = "edge-distill-mcq/1"
DEFAULT_PLACEHOLDER = "the class"


@dataclass(frozen=True)
class Question:
    question: str
    options: tuple[str, ...]

    def filled(self, class_name: str, placeholder: str | tuple[str, ...]) -> str:
        """Every occurrence of the placeholder (or of each, in order) replaced by ``class_name``."""
        text = self.question
        for p in (placeholder,) if isinstance(placeholder, str) else placeholder:
            text = text.replace(p, class_name)
        return text


@dataclass(frozen=True)
class MCQSet:
    dataset: str
    description: str
    class_names: tuple[str, ...]
    questions: tuple[Question, ...]
    placeholder: str | tuple[str, ...] = DEFAULT_PLACEHOLDER
    source: str = field(default="", compare=False)

    @property
    def num_options(self) -> int:
        return len(self.questions[0].options)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "description": self.description,
            "placeholder": self.placeholder if isinstance(self.placeholder, str) else list(self.placeholder),
            "class_names": list(self.class_names),
            "questions": [{"question": q.question, "options": list(q.options)} for q in self.questions],
        }

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def check_classes(self, class_names: list[str]) -> None:
        """The set must be written for exactly these classes, in this order."""
        if list(self.class_names) != list(class_names):
            missing = [c for c in class_names if c not in self.class_names]
            extra = [c for c in self.class_names if c not in class_names]
            detail = f"missing {missing}, not in the data {extra}" if missing or extra else "same names, other order"
            raise ToolkitError(
                f"{self.source or 'MCQ set'}: class_names do not match the dataset's ({detail}); the dataset has "
                f"{list(class_names)}"
            )


def _word_in(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name.lower())}(?![\w])", text.lower()) is not None


def validate(data: Any, source: str) -> MCQSet:
    """A dict from YAML/JSON -> MCQSet; every problem is named with its question number."""
    if not isinstance(data, dict):
        raise ToolkitError(f"{source}: an MCQ set is a mapping with format, class_names and questions")
    if data.get("format") != FORMAT:
        raise ToolkitError(f"{source}: format must be {FORMAT!r}, got {data.get('format')!r}")
    known = {"format", "dataset", "description", "placeholder", "class_names", "questions"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ToolkitError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
    names = data.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n.strip() for n in names):
        raise ToolkitError(f"{source}: class_names must be a list of at least 2 non-empty strings")
    if len(set(names)) != len(names):
        raise ToolkitError(f"{source}: class_names has duplicates")
    raw_placeholder = data.get("placeholder", DEFAULT_PLACEHOLDER)
    placeholder: str | tuple[str, ...]
    if isinstance(raw_placeholder, str) and raw_placeholder:
        placeholder, choices = raw_placeholder, (raw_placeholder,)
    elif isinstance(raw_placeholder, list) and raw_placeholder and all(isinstance(p, str) and p
                                                                       for p in raw_placeholder):  # fmt: skip
        placeholder = choices = tuple(raw_placeholder)
    else:
        raise ToolkitError(f"{source}: placeholder must be a non-empty string or a list of them, got "
                           f"{raw_placeholder!r}")  # fmt: skip
    raw = data.get("questions")
    if not isinstance(raw, list) or not raw:
        raise ToolkitError(f"{source}: questions must be a non-empty list")
    questions, seen, m = [], set(), None
    for i, q in enumerate(raw, start=1):
        where = f"{source}: question {i}"
        if not isinstance(q, dict) or set(q) != {"question", "options"}:
            raise ToolkitError(f"{where}: must have exactly the keys question and options")
        text, options = q["question"], q["options"]
        if not isinstance(text, str) or not any(p in text for p in choices):
            raise ToolkitError(f"{where}: {text!r} does not contain the placeholder {placeholder!r}")
        if text in seen:
            raise ToolkitError(f"{where}: repeats an earlier question ({text!r})")
        seen.add(text)
        if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
            hint = " (YAML reads unquoted yes/no/on/off as booleans: quote them)" if any(
                isinstance(o, bool) for o in options or []) else ""  # fmt: skip
            raise ToolkitError(f"{where}: options must be a list of non-empty strings{hint}")
        if len(set(options)) != len(options):
            raise ToolkitError(f"{where}: options repeat")
        if m is None:
            m = len(options)
        if len(options) != m or m < 2:
            raise ToolkitError(f"{where}: has {len(options)} options; every question needs the same number (>= 2), "
                               f"the first has {m}")  # fmt: skip
        for o in options:
            leaked = [n for n in names if _word_in(n, o)]
            if leaked:
                raise ToolkitError(
                    f"{where}: option {o!r} names the class {leaked[0]!r}; options must not name classes"
                )
        questions.append(Question(text, tuple(options)))
    return MCQSet(str(data.get("dataset", "")), str(data.get("description", "")), tuple(names), tuple(questions),
                  placeholder, source)  # fmt: skip


def load_mcq(path: str | os.PathLike[str]) -> MCQSet:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: MCQ set not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    return validate(data, str(path))
