"""One run of a task. session.py owns its lifecycle (trace, environment, the one status decision in
status.py, cleanup) and publishes events.py's typed events; control.py steers it (pause, step, stop);
loop.py is the agent loop (history.py builds its prompt from the step log, executor.py runs an
action, checks.py runs the task's success checks); runner.py's run_task picks a flow or the loop.
Below the drivers (flow, replay); above targets, the desktop and the backends."""
