"""Model cards: the short card `save_pretrained` writes beside the weights, and the metadata every hf_mae card
carries (hf_mae.hub's fuller cards build on `card_metadata`).

Part of the remote-code unit (copied into every checkpoint), so it imports nothing from hf_mae.
"""

import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

CARD_TAGS = ["mae", "self-supervised", "vision", "hf_mae"]
CARD_LICENSE = "apache-2.0"  # the code's license, which the weights hf_mae trains are published under
_AUTO_CARD_MARKER = "<!-- hf_mae: card written by save_pretrained -->"
_CARD_KINDS = {  # class -> (what it is, pipeline tag, Auto class, what the snippet computes)
    "MAEModel": ("MAE-pretrained ViT encoder", "image-feature-extraction", "AutoModel",
                 "features = model(**inputs).last_hidden_state  # (1, 1 + patches, hidden_size), CLS first"),
    "MAEForPreTraining": ("MAE (encoder + light decoder) for masked-image pretraining",
                          "image-feature-extraction", "AutoModelForPreTraining",
                          "loss, logits, mask = model(**inputs)  # per-patch predictions, 1 = masked"),
    "MAEForImageClassification": ("MAE ViT image classifier", "image-classification",
                                  "AutoModelForImageClassification",
                                  "label = model.config.id2label[model(**inputs).logits.argmax(-1).item()]"),
    "MAEBackbone": ("MAE ViT backbone (feature maps for dense prediction heads)", "image-feature-extraction",
                    "AutoBackbone", "maps = model(**inputs).feature_maps  # (1, hidden_size, H/p, W/p) each"),
}


def pipeline_tag_of(class_name: str) -> str:
    """The Hub pipeline tag of an hf_mae model class ("MAEModel" -> "image-feature-extraction")."""
    return _CARD_KINDS[class_name][1]


def card_metadata(pipeline_tag: str, *, custom_code: bool = True, tags=(), **fields) -> ModelCardData:
    """The metadata of every hf_mae card: library, pipeline tag and hf_mae's tags (`custom_code` when the code
    files ship with the weights, `vit` for a plain transformers ViT copy), then `tags` and any other card
    fields (license, datasets, base_model, eval_results, ...)."""
    base = CARD_TAGS + (["custom_code"] if custom_code else ["vit"])
    return ModelCardData(library_name="transformers", pipeline_tag=pipeline_tag,
                         tags=base + [t for t in tags if t not in base], **fields)


def is_auto_model_card(readme) -> bool:
    """Whether `readme` is a card that `write_model_card` wrote (and may therefore rewrite)."""
    return _AUTO_CARD_MARKER in Path(readme).read_text(encoding="utf-8", errors="replace")


def model_card(model, repo_id: str, tags: list[str] | None = None, datasets: list[str] | None = None) -> ModelCard:
    """A card naming the model type, its size and input, with license, tags, the training `datasets` (Hub ids)
    when known and a snippet that loads `repo_id`."""
    what, pipeline_tag, auto_class, usage = _CARD_KINDS[type(model).__name__]
    config = model.config
    height, width = config.image_hw
    data = card_metadata(pipeline_tag, tags=tags or (), license=CARD_LICENSE, datasets=list(datasets or []) or None)
    mode = "L" if config.num_channels == 1 else "RGB"
    size = (f"{config.hidden_size}-d, {config.num_hidden_layers} blocks, {config.num_attention_heads} heads, "
            f"{config.patch_size}x{config.patch_size} patches; {model.num_parameters() / 1e6:.2f}M weights")
    content = f"""---
{data.to_yaml()}
---
{_AUTO_CARD_MARKER}

# {Path(repo_id).name}: {what}

A Masked Autoencoder (He et al., *Masked Autoencoders Are Scalable Vision Learners*, CVPR 2022) saved with
the hf_mae package as model type `hf_mae` (`{type(model).__name__}`).

- Encoder: {size}
- Input: {height}x{width} pixels, {config.num_channels} channel(s)

## How to use

The code files ship with the weights: `trust_remote_code=True` loads them where hf_mae is not installed
(with `import hf_mae`, it is not needed).

```python
from PIL import Image
from transformers import AutoImageProcessor, {auto_class}

repo_id = "{repo_id}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = {auto_class}.from_pretrained(repo_id, trust_remote_code=True).eval()
inputs = processor(Image.open("image.png").convert("{mode}"), return_tensors="pt")
{usage}
```
"""
    return ModelCard(content)


def _folder_name(folder) -> str:
    """What the card's snippet loads when no repo id is given: the folder, unless it is a hidden staging folder
    (atomic saves write into `.name.XXXX.tmp` and rename it), whose name would be wrong once renamed."""
    return "path/to/this/folder" if Path(folder).name.startswith(".") else str(folder)


def write_model_card(model, folder, repo_id: str | None = None, tags: list[str] | None = None,
                     datasets: list[str] | None = None) -> bool:
    """Write `folder/README.md` (see `model_card`) unless a card not written here is there (a user's, or
    hf_mae.hub's fuller one); returns whether it wrote."""
    readme = Path(folder) / "README.md"
    if readme.is_file() and not is_auto_model_card(readme):
        return False
    model_card(model, repo_id or _folder_name(folder), tags=tags, datasets=datasets).save(readme)
    return True


def upload_folder(folder, repo_id: str, *, commit_message: str | None = None,
                  commit_description: str | None = None, private: bool | None = None, token=None,
                  revision: str | None = None, create_pr: bool = False):
    """One commit of `folder` to `repo_id` (created if missing); a README.md on the Hub that hf_mae did not
    write stays as it is."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    try:
        remote_card = api.hf_hub_download(repo_id, "README.md", revision=revision)
    except (HfHubHTTPError, EntryNotFoundError):  # no card there yet (or none readable): ours goes up
        remote_card = None
    ignore = ["README.md"] if remote_card is not None and not is_auto_model_card(remote_card) else None
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, create_pr=create_pr,
                             commit_message=commit_message or "Upload model (hf_mae)",
                             commit_description=commit_description, ignore_patterns=ignore)


def push_saved(obj, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
               private: bool | None = None, token=None, revision: str | None = None, create_pr: bool = False,
               **save_kwargs):
    """`obj.save_pretrained` into a temporary folder, then one commit of it (see `upload_folder`). What
    transformers' `push_to_hub` does, without the generic README it writes on every push: pushing a processor
    leaves the repo's card (hf_mae's, or the user's) as it is."""
    with tempfile.TemporaryDirectory() as folder:
        obj.save_pretrained(folder, **save_kwargs)
        return upload_folder(folder, repo_id, commit_message=commit_message or f"Upload {type(obj).__name__}",
                             commit_description=commit_description, private=private, token=token,
                             revision=revision, create_pr=create_pr)


__all__ = ["CARD_LICENSE", "CARD_TAGS", "card_metadata", "is_auto_model_card", "model_card", "pipeline_tag_of",
           "push_saved", "upload_folder", "write_model_card"]
