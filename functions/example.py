"""An example of your own functions: every *.py in FUNCTIONS_DIR (./functions) is loaded at start.

Copy this file to start your own; see the README, "Write your own functions".
"""

from litejobs import JobError, progress, task


@task(queue="default", public=True)
def add(a: int, b: int = 1) -> int:
    """Add two numbers: the smallest function there is."""
    return a + b


@task(queue="default", public=True)
def count_words(text: str) -> dict:
    """Count the words of a text, reporting progress; an empty text fails the job."""
    words = text.split()
    if not words:
        raise JobError("text has no words")
    progress(len(words), len(words), "counted")
    return {"words": len(words)}
