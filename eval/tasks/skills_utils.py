"""Functions the skills task YAML refers to (`!function skills_utils.<name>`)."""


def doc_to_target(doc: dict) -> str:
    """The reference answer, stripped like the model's output is."""
    return str(doc["answer"]).strip()
