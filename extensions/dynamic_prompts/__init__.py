"""Dynamic prompts: `{a|b|c}` variants, `{2$$a|b|c}` (two of them), `__name__` wildcards, per picture.

The template language is the `dynamicprompts` package's (the one sd-dynamic-prompts uses, so existing
templates and wildcard collections work: weights `{2::a|b}`, ranges `{1-3$$...}`, own separators
`{2$$ and $$...}`, nested variants and wildcards, `__folder/name__`, `__*__`, .txt/.json/.yaml files).
Two choices of ours: a bound without its own separator joins with the "joiner" setting (", " unless
changed; the package alone joins with ","), and text with no `{` and no `__name__` is left as typed.

- Random mode: picture k's expansion is drawn from a generator seeded with picture k's own seed, so a
  seed gives the same prompt (and the same picture) whatever the batch and the picture's place in it.
- Combinatorial mode: picture k of the job gets the k-th combination, cycling when there are fewer.

Wildcards come from `wildcards/` beside this file, then from the `wildcards_dir` setting's folder (a
file of the same name there wins). The text that is encoded and saved is the expansion; the infotext
keeps the template as `Template: ...` (and `Negative Template: ...` when the negative changed).
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from pathlib import Path

from dynamicprompts.generators.combinatorial import CombinatorialPromptGenerator
from dynamicprompts.generators.randomprompt import RandomPromptGenerator
from dynamicprompts.wildcards import WildcardManager
from dynamicprompts.wildcards.values import WildcardValues

from backend.extensions.api import Arg, Controls, Setting

BUILTIN_WILDCARDS = Path(__file__).resolve().parent / "wildcards"
TITLE = "Dynamic Prompts"
DEFAULT_JOINER = ", "

# A template has a variant or a wildcard reference; "a_b__c" (no closing __name__) is plain text.
_TEMPLATE = re.compile(r"\{|__[^_\s]\S*?__")
# `{2$$`, `{~1-3$$`, `{-2$$`... not followed by its own separator (`{2$$ and $$`): the default joiner goes in.
_BOUND_WITHOUT_SEPARATOR = re.compile(r"(\{[~!@]?(?:\d+-\d+|\d+-|-\d+|\d+)\$\$)(?![^${}]+\$\$)")


def is_template(text: str) -> bool:
    return bool(text) and _TEMPLATE.search(text) is not None


def with_joiner(text: str, joiner: str) -> str:
    """`text` with the joiner written out in every bound that gives none (the package's default is ",")."""
    if joiner == ",":
        return text
    return _BOUND_WITHOUT_SEPARATOR.sub(lambda m: m.group(1) + joiner + "$$", text)


def clean_joiner(value) -> str:
    """The joiner setting as the template syntax can hold it: no `$`, `{`, `}`; empty means ","."""
    joiner = "".join(c for c in str(value if value is not None else DEFAULT_JOINER) if c not in "${}")
    return joiner or ","


class Wildcards(WildcardManager):
    """The package's manager over several folders (later ones win), writing the joiner into the values
    too, so `{2$$...}` inside a wildcard file joins as it does in the prompt."""

    def __init__(self, folders: list[Path], joiner: str) -> None:
        super().__init__(root_map={"": [f for f in folders if f.is_dir()]})
        self.joiner = joiner

    def get_values(self, wildcard: str) -> WildcardValues:
        values = super().get_values(wildcard)
        if self.joiner == ",":
            return values
        return WildcardValues.from_items(
            with_joiner(v, self.joiner) if isinstance(v, str) else type(v)(with_joiner(v.content, self.joiner), v.weight)
            for v in values)


def random_expansion(template: str, seed: int, wildcards: Wildcards) -> str:
    """The template drawn with a generator seeded by `seed` alone (the same seed, the same text)."""
    generator = RandomPromptGenerator(wildcards, seed=seed)
    return generator.generate(with_joiner(template, wildcards.joiner), 1)[0]


def combinations(template: str, count: int, wildcards: Wildcards) -> list[str]:
    """The first `count` combinations of the template, in the package's order (fewer if there are fewer)."""
    return CombinatorialPromptGenerator(wildcards).generate(with_joiner(template, wildcards.joiner), max_prompts=count)


def _flag(value) -> bool:
    if isinstance(value, str):  # an API client may send "false"
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


@dataclass(frozen=True)
class Expansion:
    prompt: str
    negative: str
    template: str
    negative_template: str


class DynamicPrompts:
    """The expander and the postprocess hook, sharing what each picture's template was."""

    def __init__(self, api) -> None:
        self.api = api
        self._expanded: dict[int, dict[int, Expansion]] = {}  # id(request) -> seed -> its texts

    def switch(self, request, name: str) -> bool:
        given = self.api.extension_args(request)  # the accordion / alwayson_scripts; else the setting
        return _flag(given[name] if name in given else self.api.option(name))

    def wildcards(self) -> Wildcards:
        # Built per job (a folder scan), so files added or edited count from the next job on.
        folders = [BUILTIN_WILDCARDS]
        extra = str(self.api.option("wildcards_dir") or "").strip()
        if extra:
            folders.append(Path(extra).expanduser())
        return Wildcards(folders, clean_joiner(self.api.option("joiner")))

    def expand(self, prompts: list[str], negatives: list[str], seeds: list[int], request):
        if not self.switch(request, "enabled") or not any(map(is_template, [*prompts, *negatives])):
            return prompts, negatives
        wildcards = self.wildcards()
        if self.switch(request, "combinatorial"):
            new_prompts = self._combinatorial(prompts, wildcards)
            new_negatives = self._combinatorial(negatives, wildcards)
        else:
            new_prompts = [random_expansion(p, s, wildcards) if is_template(p) else p for p, s in zip(prompts, seeds)]
            new_negatives = [random_expansion(n, s, wildcards) if is_template(n) else n
                             for n, s in zip(negatives, seeds)]
        self._remember(request, seeds, prompts, negatives, new_prompts, new_negatives)
        return new_prompts, new_negatives

    @staticmethod
    def _combinatorial(texts: list[str], wildcards: Wildcards) -> list[str]:
        found: dict[str, list[str]] = {}
        for text in set(texts):
            found[text] = (combinations(text, len(texts), wildcards) if is_template(text) else []) or [text]
        return [found[text][k % len(found[text])] for k, text in enumerate(texts)]

    def _remember(self, request, seeds, prompts, negatives, new_prompts, new_negatives) -> None:
        key = id(request)
        if key not in self._expanded:
            weakref.finalize(request, self._expanded.pop, key, None)  # forgotten with the request
        self._expanded[key] = {seed: Expansion(p, n, t, nt)
                               for seed, p, n, t, nt in zip(seeds, new_prompts, new_negatives, prompts, negatives)}

    def postprocess(self, item) -> None:
        found = self._expanded.get(id(item.request), {}).get(item.seed)
        if found is None or found.prompt != item.prompt:  # not one of ours (or another run's picture)
            return
        if found.template != found.prompt:
            item.params["Template"] = found.template
        if found.negative_template != found.negative:
            item.params["Negative Template"] = found.negative_template


def register(api) -> None:
    hooks = DynamicPrompts(api)
    api.add_setting(Setting(key="enabled", default=True, label="Dynamic prompts on when a job does not say",
                            kind="checkbox"))
    api.add_setting(Setting(key="combinatorial", default=False, kind="checkbox",
                            label="Combinatorial by default: picture k gets the k-th combination"))
    api.add_setting(Setting(key="wildcards_dir", default="", label="Wildcards folder, besides the built-in one "
                            "(name.txt is __name__; a file here wins over a built-in one of the same name)"))
    api.add_setting(Setting(key="joiner", default=DEFAULT_JOINER,
                            label="Joiner of {2$$a|b|c} when the template names none"))
    api.add_controls(Controls(title=TITLE, args=(
        Arg("enabled", "Dynamic Prompts enabled", kind="checkbox", default=True),
        Arg("combinatorial", "Combinatorial generation (picture k gets the k-th combination)", kind="checkbox",
            default=False),
    )))
    api.expand_prompts(hooks.expand)
    api.postprocess(hooks.postprocess)
