"""A broken driver: breaks the rule 'garbage' (see _wire.py)."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _wire
_wire.BREAK.add("garbage")
_wire.main()
