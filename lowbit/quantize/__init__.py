"""The converter: architecture rules (archs), the header-only plan (plan), the streaming executor
(stream, convert), hub resolution (hub), the manifest and resume journal (manifest), the cupy twin of
the quantizers (gpu) and `inspect` (report). Entry point: `lowbit.quantize.convert.convert`.
"""
