"""Study: audit hundreds to thousands of adapters at once, resumably, locally or on Ray.

study.py (run_study: the pipeline), sources.py (SOURCE arguments → jobs), hub.py (Hugging Face
repositories through huggingface_hub), worker.py (one job → one record and its layer rows, or a
failure), failure.py (failure kinds and reasons), executors.py (process pool, Ray; batches, job
order), store.py (the streamed journals and resume), arch.py (architecture family from layer
names), model.py (the typed record and tables), tables.py (study.json), render.py (study.md, text).
"""

from .study import StudyOptions, StudyResult, run_study

__all__ = ["StudyOptions", "StudyResult", "run_study"]
