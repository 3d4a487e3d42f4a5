"""The fine-tuning jobs API (OpenAI's and Together's shape): a job trains a LoRA adapter on the served
base model by running the pipeline's stages as processes in a job workspace, then serves the adapter
by name next to the base.

    request.py    the create request (OpenAI + Together fields) -> a JobSpec, or a 400 naming the field
    store.py      jobs, events and checkpoints in the platform's SQLite database; the API objects
    workspace.py  a job's directory: its files, the recipe derived from the request, the model names
    progress.py   the finished checkpoints on disk (losses and steps come as the stages' events, recipes/events.py)
    runner.py     one job: the stages as subprocesses (own process group, so cancel stops them all),
                  watched through their structured events ($LATHE_EVENTS), never their printed output
    service.py    the queue: validation, scheduling, restart recovery, billing, serving the result

serving/ never imports pipelines/: the stages run as `python -m pipelines.cli <stage>` processes.
Its settings are the recipe's `serve.fine_tuning` (recipes/serve_schema.FineTuningConfig); off unless enabled.
"""
