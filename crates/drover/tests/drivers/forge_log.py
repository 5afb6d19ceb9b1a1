"""A hostile driver: breaks the rule 'forge_log' (see _wire.py)."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _wire
_wire.BREAK.add("forge_log")
_wire.main()
