"""An extension's metadata file, `studio-extension.json`, beside its entry module.

    {"id": "my_ext", "name": "My extension", "version": "1.2.0", "api": ">=1.0,<2",
     "entry": "extension.py", "requirements": ["dynamicprompts==0.31.0"],
     "author": "...", "url": "https://github.com/..."}

`id` names the extension everywhere (its `extension_args` key, its API prefix,
its settings section); `api` is the range of plugin API versions it works with
(PEP 440 specifiers, as pip reads them).
"""
from __future__ import annotations

import json
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MANIFEST = "studio-extension.json"


class ManifestError(ValueError):
    pass


class ExtensionManifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")
    name: str = ""
    version: str = "0.0.0"
    api: str = Field(min_length=1)
    entry: str = "extension.py"
    requirements: list[str] = Field(default_factory=list)
    author: str = ""
    url: str = ""

    @field_validator("api")
    @classmethod
    def _specifier(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"api {value!r} is not a version range such as \">=1.0,<2\"") from None
        return value

    @field_validator("entry")
    @classmethod
    def _inside(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts or not value.endswith(".py"):
            raise ValueError(f"entry {value!r} must be a .py file inside the extension's folder")
        return value

    @property
    def title(self) -> str:
        return self.name or self.id

    def accepts(self, api_version: str) -> bool:
        return SpecifierSet(self.api).contains(Version(api_version), prereleases=True)


def read_manifest(folder: Path) -> ExtensionManifest:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot be read as JSON ({exc})") from None
    try:
        return ExtensionManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise ManifestError(f"{path}: {problems}") from None
