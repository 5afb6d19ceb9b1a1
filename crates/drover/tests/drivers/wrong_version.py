"""A broken driver: breaks the rule 'wrong_version' (see _wire.py)."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _wire
_wire.BREAK.add("wrong_version")
_wire.main()
