"""HTML reports from traces (`vlagent report`, the suite's report): pages built from the step log
(build.py, page.py), the action drawn on each screenshot (draw.py), Jinja2 templates and static
assets. Reads traces; nothing below imports it."""
