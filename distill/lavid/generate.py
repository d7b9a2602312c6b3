"""Writing an MCQ set with a chat LLM (methods-spec 4.1 i): the paper's generation prompt, a parser for its
output format (a question line, then numbered option lines), per-question validation, and retries for
malformed questions. Any chat model works; the paper used GPT-4o, and small local models mostly fail."""

from __future__ import annotations

import re
from collections.abc import Callable

from distill.lavid.mcq import DEFAULT_PLACEHOLDER, FORMAT, MCQSet, validate
from runtime.errors import ToolkitError

Generate = Callable[[str], str]
_OPTION = re.compile(r"^\s*(\d+)[.)]\s*(.+?)\s*$")


def generation_prompt(class_names: list[str], description: str, n_questions: int, n_options: int) -> str:
    return (
        f"Generate {n_questions} questions that help distinguish these classes of {description}: "
        f"{', '.join(class_names)}.\n"
        "Rules:\n"
        "1. The questions must be about what can be seen; a slight deviation (e.g. the environment) is allowed.\n"
        f"2. Each question has {n_options} options; each class has exactly one correct option; spread the classes "
        "across the options as evenly as possible.\n"
        f'3. Each question must contain the words "{DEFAULT_PLACEHOLDER}" where the class would go.\n'
        "4. Maximise the separation between classes, like a decision tree that maximises entropy.\n"
        "5. Use your knowledge of how the classes differ visually.\n"
        "6. Output only the questions and options: a question line, then numbered option lines '1. ...'; "
        "a blank line between questions; do not number the questions; no brackets, no commentary, no code.\n"
        "7. Do not repeat questions.\n"
        "8. Never use a class name in an option."
    )


def parse_questions(text: str) -> list[tuple[str, list[str]]]:
    """Blocks of 'question line' + 'N. option' lines -> (question, options); lines of other shapes are dropped."""
    blocks: list[tuple[str, list[str]]] = []
    question: str | None = None
    options: list[str] = []
    for line in text.splitlines() + [""]:
        m = _OPTION.match(line)
        if m and question is not None:
            options.append(m.group(2))
        elif line.strip() and not m:
            if question is not None and options:
                blocks.append((question, options))
            question, options = line.strip().lstrip("-*# ").strip(), []
        elif not line.strip() and question is not None and options:
            blocks.append((question, options))
            question, options = None, []
    return blocks


def generate_mcq(generate: Generate, class_names: list[str], dataset: str, description: str, n_questions: int = 50,
                 n_options: int = 5, max_rounds: int = 5, log: Callable[[str], None] = print) -> MCQSet:  # fmt: skip
    """Ask ``generate`` (prompt -> text) for questions until ``n_questions`` valid ones are collected."""
    accepted: list[dict] = []
    seen: set[str] = set()
    for round_ in range(1, max_rounds + 1):
        missing = n_questions - len(accepted)
        reply = generate(generation_prompt(class_names, description, missing, n_options))
        kept = rejected = 0
        for question, options in parse_questions(reply):
            candidate = {"question": question, "options": options}
            try:  # validate the question alone against the schema's rules
                validate({"format": FORMAT, "class_names": class_names, "questions": [candidate]}, "generated")
                if len(options) != n_options or question in seen:
                    raise ToolkitError(f"{len(options)} options or repeated")
            except ToolkitError:
                rejected += 1
                continue
            seen.add(question)
            accepted.append(candidate)
            kept += 1
            if len(accepted) == n_questions:
                break
        log(f"round {round_}: kept {kept} question(s), rejected {rejected} malformed; {len(accepted)}/{n_questions}")
        if len(accepted) == n_questions:
            break
    if not accepted:
        raise ToolkitError("the language model produced no valid question (each needs 'the class', "
                           f"{n_options} numbered options, no class names); try a larger model")  # fmt: skip
    data = {"format": FORMAT, "dataset": dataset, "description": description, "placeholder": DEFAULT_PLACEHOLDER,
            "class_names": class_names, "questions": accepted}  # fmt: skip
    return validate(data, "generated")
