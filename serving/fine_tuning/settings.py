"""Settings of the fine-tuning jobs API (`ServerSettings.fine_tuning`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class FineTuningSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Serve /v1/fine_tuning/jobs and run the jobs.")
    base_recipe: str = Field(
        "default", description="The recipe a job's recipe is derived from (a path, or a name under recipes/: "
        "`default` is recipes/default.yaml): its training, eval, gate and registry settings apply unless the "
        "request or `overrides` change them. Relative paths resolve against the server's working directory "
        "(the project root).")
    state_dir: Path = Field(
        Path(".lathe/fine_tuning"), description="Job workspaces (`jobs/<job id>/`: files, recipe.yaml, artifacts, "
        "checkpoints, stage logs) and the evaluation cache the jobs share.")
    max_concurrent_jobs: int = Field(1, ge=1, description="Jobs training at once; more wait as `queued`.")
    price_per_million_tokens: float = Field(
        0.50, ge=0, description="US dollars per million trained tokens (every token of every epoch), charged to "
        "the key that created the job.")
    max_file_bytes: int = Field(512_000_000, gt=0, description="Largest training or validation file a job takes.")
    min_rows: int = Field(1, ge=1, description="Fewest valid rows a training file must have.")
    max_errors_reported: int = Field(
        20, ge=1, description="Bad rows named (file id, line, reason) in a failed job's error message.")
    n_checkpoints: int = Field(
        1, ge=1, description="Checkpoints saved per training run unless the request sets Together's "
        "`n_checkpoints`; a job interrupted by a restart resumes from the last one.")
    overrides: list[str] = Field(
        default_factory=list, description="`key.sub=value` recipe overrides applied to every job after the "
        "request's settings (e.g. `sft.max_steps=200` to cap jobs, `eval.suites=[{name: skills}]`).")
    cancel_grace_s: float = Field(10.0, ge=0, description="After SIGTERM, how long a stage may take to exit "
                                                          "before it is killed (cancel, shutdown).")
    poll_interval_s: float = Field(1.0, gt=0, description="How often running stages are checked for new "
                                                          "checkpoints and the queue for free slots.")
