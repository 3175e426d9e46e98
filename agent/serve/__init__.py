"""`vlagent serve`: one model and engine on one device, shared by many agents over the
OpenAI-compatible chat API that `--backend openai` speaks.

    batch.py      per-conversation KV regions (one static cache cut into equal regions; a request takes
                  the free region sharing the longest prefix with its prompt), prefill of a request into
                  its region (the engine's own prefill, pointed at the region), and one decode step for
                  all decoding requests at once (a CUDA graph per KV span)
    scheduler.py  the one thread that touches the device: admits requests, prefills, batches decodes
    server.py     HTTP: chat completions in, the native reply out; the policy's grammar from the
                  request's JSON schema; refusals with a clear message
    process.py    start and stop `vlagent serve` as a child process (suites, tests)

The memory plan is agent.backends.budget.plan_agents (also `vlagent budget --agents N`).
"""
