#!/usr/bin/env python3
"""Scenario "idle": no workload of its own, for watching only an EXTRA program."""
import json
import os

print(json.dumps({"scenario": "idle", "pid": os.getpid(), "kernel": os.uname().release, "ok": True}))
