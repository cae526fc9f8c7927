"""The executable model of Linux memory-failure handling.

Drivers talk to it through actions (``memfail.model.actions``) and read the trace
(``memfail.model.trace``); everything mutable lives under one ``Host``.
"""
