"""Plug-ins for the frameworks (:mod:`scdl.frameworks.plugin` is the contract): SCDL."""

from scdl.plugins.scdl_plugin import SCDLPlugin, SCDLTerms

__all__ = ["SCDLPlugin", "SCDLTerms"]
