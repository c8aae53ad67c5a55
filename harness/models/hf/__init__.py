"""The `hf` model source: Hugging Face transformers models next to the harness's own (docs/hf.md).

`families` (torch-free) maps cases onto transformers' config classes; `build` makes the model;
`model` wraps it in the harness's model interface; `accounting` counts its parameters and FLOPs.
"""
