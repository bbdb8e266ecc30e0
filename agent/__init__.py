"""edgefleet device agent: enrollment, connection, downloads, install, engines, scheduling,
local inference API and metrics.

The agent is what ships to devices, so importing it must stay light: it never imports
torch, onnx, the server or the compressor (tests/agent/test_imports.py checks this).
"""

__version__ = "0.1.0"
