"""Prompt templates and class names: the text a user may put in front of the text tower,
checked by one set of rules for training, classification, the CLI and the API."""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

MAX_TEMPLATE_CHARS = 300
MAX_TEMPLATES = 100
MAX_CLASSNAME_CHARS = 100

# The paper's hand-written template per dataset (CoOp's CUSTOM_TEMPLATES).
DATASET_TEMPLATES: dict[str, str] = {
    "default": "a photo of a {}.",
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "stanford_cars": "a photo of a {}.",
    "sun397": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "flowers102": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
}
# Ensembles: every template's feature is averaged per class (CLIP's prompt ensembling).
TEMPLATE_ENSEMBLES: dict[str, list[str]] = {
    "imagenet80": [t("{}") for t in OPENAI_IMAGENET_TEMPLATES],
    "imagenet7": [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES],
}


def shorten(value: object, limit: int = 40) -> str:
    """``repr`` of at most ``limit`` characters of ``value``: what an error may echo back."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def template_problem(template: str) -> str | None:
    """None for a usable template: one positional ``{}`` (no name, index, attribute,
    conversion or format spec; ``{{`` and ``}}`` are literal braces), at most
    MAX_TEMPLATE_CHARS characters; else why not."""
    if len(template) > MAX_TEMPLATE_CHARS:
        return f"template is {len(template)} characters, the limit is {MAX_TEMPLATE_CHARS}"
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion
                  in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # unbalanced braces
        return f"template {shorten(template)} is malformed ({e})"
    if fields != [("", "", None)]:
        return (f"template {shorten(template)} must contain exactly one '{{}}' (no name, index, "
                "conversion or format spec inside it)")
    return None


def resolve_templates(spec: str | Sequence[str] | None) -> list[str]:
    """A template name, an ensemble name, a string with one ``{}``, or a list of those.
    Raises ValueError saying what is wrong."""
    if spec is None:
        return [DATASET_TEMPLATES["default"]]
    if not isinstance(spec, str):
        resolved = [t for item in spec for t in resolve_templates(item)]
        if not resolved:
            raise ValueError("empty template list")
        resolved = list(dict.fromkeys(resolved))
        if len(resolved) > MAX_TEMPLATES:
            raise ValueError(f"{len(resolved)} templates, the limit is {MAX_TEMPLATES}")
        return resolved
    if spec in DATASET_TEMPLATES:
        return [DATASET_TEMPLATES[spec]]
    if spec in TEMPLATE_ENSEMBLES:
        return list(TEMPLATE_ENSEMBLES[spec])
    problem = template_problem(spec)
    if problem is not None:
        raise ValueError(f"{problem}; or use a template name ({', '.join(DATASET_TEMPLATES)}, "
                         f"{', '.join(TEMPLATE_ENSEMBLES)})")
    return [spec]


def classname_problems(names: Sequence[str], *, max_count: int | None = None) -> list[str]:
    """Every problem with a list of class names: empty, padded, too long, control
    characters, duplicates, too many."""
    problems = []
    if max_count is not None and len(names) > max_count:
        problems.append(f"{len(names)} classes, the limit is {max_count}")
    bad = []
    for name in names:
        if not name.strip():
            bad.append(f"class name {shorten(name)} is empty")
        elif name != name.strip():
            bad.append(f"class name {shorten(name)} has leading or trailing spaces")
        elif len(name) > MAX_CLASSNAME_CHARS:
            bad.append(f"class name {shorten(name)} is {len(name)} characters, the limit is "
                       f"{MAX_CLASSNAME_CHARS}")
        elif any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name):
            bad.append(f"class name {shorten(name)} contains control characters")
    problems += bad[:10] + ([f"... and {len(bad) - 10} more bad class names"]
                            if len(bad) > 10 else [])
    seen, duplicates = set(), []
    for name in names:
        if name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        problems.append("duplicate class names: " + ", ".join(shorten(d) for d in duplicates[:10]))
    return problems
