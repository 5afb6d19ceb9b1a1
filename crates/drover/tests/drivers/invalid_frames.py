"""A broken driver: breaks the rule 'invalid_frames' (see _wire.py)."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _wire
_wire.BREAK.add("invalid_frames")
_wire.main()
