"""`vlagent ui`: a local web console for runs (Starlette on uvicorn, server-side Jinja2 pages, server-
sent events and a multipart JPEG stream; plain JS, no build step).

    app.py         the Console: runs folder, live runs, playground, token; its server
    routes.py      the pages, the run API, the event and frame streams
    auth.py        the token, Host and Origin checks in front of every route
    live.py        a live run as the page sees it, built from its RunSession's events
    frames.py      the live display as JPEG frames (read from grab.py, only while watched)
    attend.py      attended runs: approve / correct / reject, `allow.confirm:`, the take-over lease
    human.py       a person's own action on the display, written as a human step
    start.py       a run or suite started from the page (a thread of the console's process, or a process)
    relay.py       runs and suites of other processes watched and steered over a local socket
    watch.py       `vlagent run/replay/suite --watch`, `--attended`: a console for a CLI run, or the terminal asks
    grab.py        the frame grabber process
    terminal.py    an attended run's question in the terminal
    playground.py  one screenshot + an instruction -> the proposed action
    runs.py        the live runs' registry and the past runs (the trace folders under the runs folder)
    views.py       templates (templates/, and the report's own step cards and overlays)
"""
