"""Data: dataset sources (`sources`), pixel transforms (`transforms`), robust decoding and collation
(`decoding`), seeded training loaders (`train_loader`), and fine-tuning's augmentations (`augment`, `mixup`)."""
