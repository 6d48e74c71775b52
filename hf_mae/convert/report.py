"""What a conversion mapped, ignored, left unmapped or missing."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models.mae.configuration_mae import MAEConfig


@dataclass
class ConversionReport:
    """What `load_any` did with each key. Checkpoint keys are as found after unwrapping (`model` /
    `state_dict` entries) and stripping prefixes (`module.`, `backbone.`, ...); hf_mae keys are the returned
    model's."""

    source: str
    layout: str  # detected, e.g. "official (encoder + decoder)", "transformers ... (legacy 4.x names)"
    model_class: str  # "MAEForPreTraining" or "MAEModel"
    config_source: str  # "inferred from shapes", "given", "from the source's config" (+ overrides)
    config: MAEConfig | None = None
    mapped: dict = field(default_factory=dict)  # checkpoint key -> hf_mae key (q/k/v: three keys, one target)
    unmapped: dict = field(default_factory=dict)  # checkpoint key -> reason (unrecognised / not in the model)
    ignored: dict = field(default_factory=dict)  # checkpoint key -> reason (recognised, deliberately dropped)
    missing: list = field(default_factory=list)  # hf_mae keys the checkpoint lacks (left at initial values)
    notes: list = field(default_factory=list)  # position embeddings, assumed fields, wrappers, ...

    def to_dict(self) -> dict:
        return {"source": self.source, "layout": self.layout, "model_class": self.model_class,
                "config_source": self.config_source,
                "config": self.config.to_diff_dict() if self.config else None,
                "mapped": dict(self.mapped), "unmapped": dict(self.unmapped), "ignored": dict(self.ignored),
                "missing": list(self.missing), "notes": list(self.notes)}

    def format(self, max_keys: int | None = 8) -> str:
        """Readable summary; at most `max_keys` keys per list (None: all)."""
        def listing(keys) -> str:
            keys = list(keys)
            shown = keys if max_keys is None else keys[:max_keys]
            more = f", ... ({len(keys) - len(shown)} more)" if len(keys) > len(shown) else ""
            return ", ".join(shown) + more

        c = self.config
        lines = [f"source:   {self.source}", f"layout:   {self.layout}",
                 f"model:    {self.model_class}, config {self.config_source}"]
        if c is not None:
            arch = (f"image {c.image_size}, patch {c.patch_size}, {c.num_channels} channels, encoder "
                    f"{c.hidden_size} x {c.num_hidden_layers} blocks, {c.num_attention_heads} heads")
            if self.model_class == "MAEForPreTraining":
                arch += (f"; decoder {c.decoder_hidden_size} x {c.decoder_num_hidden_layers} blocks, "
                         f"{c.decoder_num_attention_heads} heads; norm_pix_loss={c.norm_pix_loss}")
            lines.append(f"          {arch}")
        targets = len(set(self.mapped.values()))
        lines.append(f"mapped:   {len(self.mapped)} checkpoint keys -> {targets} hf_mae keys")
        for label, items in (("ignored", self.ignored), ("unmapped", self.unmapped)):
            lines.append(f"{label + ':':<9} {len(items)}")
            by_reason = {}
            for key, reason in items.items():
                by_reason.setdefault(reason, []).append(key)
            lines += [f"          {reason}: {listing(keys)}" for reason, keys in by_reason.items()]
        lines.append(f"missing:  {len(self.missing)}" + (f": {listing(self.missing)}" if self.missing else ""))
        lines += [f"note:     {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _first(items, count: int = 5) -> str:
    items = list(items)
    more = f", ... ({len(items) - count} more)" if len(items) > count else ""
    return ", ".join(repr(item) for item in items[:count]) + more
