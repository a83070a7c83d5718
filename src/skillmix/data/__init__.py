"""SuperNI data: task files, task selection, instance splits, Tk-Instruct prompts and batching."""
from skillmix.data.collate import (
    Collator,
    EncodedExample,
    TruncationReport,
    encode_examples,
    model_inputs,
)
from skillmix.data.prompts import Prompt, build_prompt, num_tokens
from skillmix.data.superni import (
    DATA_DIR_ENV,
    Instance,
    MultiTaskData,
    Skipped,
    Task,
    list_tasks,
    load_multitask_data,
    load_task,
    load_tasks,
    official_split,
    resolve_data_dir,
    select_tasks,
    split_instances,
)

__all__ = [
    "Collator",
    "DATA_DIR_ENV",
    "EncodedExample",
    "Instance",
    "MultiTaskData",
    "Prompt",
    "Skipped",
    "Task",
    "TruncationReport",
    "build_prompt",
    "encode_examples",
    "list_tasks",
    "load_multitask_data",
    "load_task",
    "load_tasks",
    "model_inputs",
    "num_tokens",
    "official_split",
    "resolve_data_dir",
    "select_tasks",
    "split_instances",
]
