"""A broken driver: breaks the rule 'no_hello' (see _wire.py)."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _wire
_wire.BREAK.add("no_hello")
_wire.main()
