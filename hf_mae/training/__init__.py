"""Training: the one loop (`loop`), optimizers and schedules (`optim`), checkpoints (`checkpointing`),
output-folder ownership (`output_dir`), run start-up and the run log (`run`), precision and allocator
settings."""
