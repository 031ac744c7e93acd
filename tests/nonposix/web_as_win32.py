"""`python web_as_win32.py ARGS` runs `python web.py ARGS` down web.py's
win32 branches: gevent patches and every module imports as usual, then
`sys.platform` says "win32" for what runs from there on (web.serve's choice
of signal.signal for Ctrl-C). Use it with sitecustomize.py beside it."""

import sys

from gevent import monkey

monkey.patch_all(subprocess=False)  # as web.py does

import web  # noqa: E402

sys.platform = "win32"
web.main(sys.argv[1:])
