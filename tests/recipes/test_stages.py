"""The stage list exists once: dvc.yaml's stages and their order are recipes.stages.CHAIN."""

from pathlib import Path

import yaml

from recipes.stages import CHAIN, JOB_STAGES, TRAINING

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_yaml_runs_the_chain_in_order():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == CHAIN
    assert [stages[s]["cmd"] for s in CHAIN] == [f"bin/lathe {s}" for s in CHAIN]
    assert TRAINING == tuple(s for s in CHAIN if s in TRAINING) and set(JOB_STAGES) < set(CHAIN)
