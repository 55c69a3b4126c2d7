"""Decode one msgpack payload on stdin and print it as JSON: a filter for the nats CLI's --translate.

nats stream view JB_EVT --subject 'jb.evt.*.fill' --translate 'python3 docs/examples/msgpack2json.py'
"""

import json
import sys

import msgpack

print(json.dumps(msgpack.unpackb(sys.stdin.buffer.read(), raw=False), default=repr))
