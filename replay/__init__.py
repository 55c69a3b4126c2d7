"""The log is the truth; this package derives from it again and checks against it.

  rebuild, fold   a projection rebuilt from JB_EVT into a new file, then swapped in atomically
  verify          JB_CMD re-decided through a fresh core and compared with JB_EVT byte for byte
  at              the state right after any JB_EVT sequence (time travel)
  hashing         content hashes of a read model, to compare a rebuild with the live one

Snapshots are the engine's (engine/snapshots.py); the `jetbook replay` command is the shell's
(jetbook/replay_cli.py).
"""
