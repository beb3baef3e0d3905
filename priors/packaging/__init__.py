"""Context packages: one folder per current study, described by ``manifest.json``."""

from __future__ import annotations

from priors.packaging.manifest import ManifestError, build_manifest, write_manifest

__all__ = ["ManifestError", "build_manifest", "write_manifest"]
