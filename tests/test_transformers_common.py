"""transformers' own common model, config, backbone and image-processor tests, run against hf_mae's classes.

The mixins come from the source distribution of the installed transformers (see `transformers_sdist`). Every
test they define runs, except those in `SKIPS`, each with its reason.
"""

import os
import unittest
from unittest import mock

import pytest
import torch
import transformers_sdist  # noqa: I001 (tests/ helper)
from transformers.models.auto import modeling_auto

import hf_mae
from hf_mae import (
    MAEBackbone,
    MAEConfig,
    MAEForImageClassification,
    MAEForPreTraining,
    MAEImageProcessor,
    MAEImageProcessorFast,
    MAEModel,
)

try:
    modeling_common = transformers_sdist.load("test_modeling_common")
    configuration_common = transformers_sdist.load("test_configuration_common")
    backbone_common = transformers_sdist.load("test_backbone_common")
    image_processing_common = transformers_sdist.load("test_image_processing_common")
except transformers_sdist.TransformersTestsUnavailable as error:
    if os.environ.get(transformers_sdist.SKIP_ENV) != "skip":
        raise
    pytest.skip(f"transformers' common tests are unavailable: {error}", allow_module_level=True)

ModelTesterMixin = modeling_common.ModelTesterMixin
floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor

_RANDOM_MASKS = "masks are drawn at random in every training-mode forward (transformers' ViTMAE test skips it)"
_PROBE_EVAL = ("a linear probe keeps its frozen encoder in eval mode (official linear probing), and gradient "
               "checkpointing only engages in training mode")
# Every test of transformers' mixins not run here, with why. Keys: test name, or (test class, test name).
SKIPS: dict = {
    "test_inputs_embeds": "MAE takes pixel values, no inputs_embeds (transformers' ViTMAE test skips it)",
    ("MAEForPreTrainingTest", "test_determinism"): _RANDOM_MASKS,
    ("MAEForPreTrainingTest", "test_model_outputs_equivalence"): _RANDOM_MASKS,
    ("MAEForPreTrainingTest", "test_batching_equivalence"): _RANDOM_MASKS,
    ("MAEForImageClassificationLinearProbeTest", "test_retain_grad_hidden_states_attentions"):
        "a linear probe's encoder is frozen by design: its hidden states and attentions carry no gradient",
    **{("MAEForImageClassificationLinearProbeTest", name): _PROBE_EVAL for name in (
        "test_training_gradient_checkpointing", "test_training_gradient_checkpointing_use_reentrant_false",
        "test_training_gradient_checkpointing_use_reentrant_true")},
}


def _register_names(test: unittest.TestCase) -> None:
    """Put hf_mae's classes in transformers' name tables for the duration of `test`, as a model inside
    transformers is: the mixins read them to tell base models (no loss) and backbones from heads, and which
    heads take class labels. The Auto classes themselves go through `hf_mae`'s registration."""
    for table, class_name in _NAME_TABLES.items():
        patcher = mock.patch.dict(getattr(modeling_auto, table), {MAEConfig.model_type: class_name})
        patcher.start()
        test.addCleanup(patcher.stop)


_NAME_TABLES = {"MODEL_MAPPING_NAMES": "MAEModel", "MODEL_FOR_PRETRAINING_MAPPING_NAMES": "MAEForPreTraining",
                "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "MAEForImageClassification",
                "MODEL_FOR_BACKBONE_MAPPING_NAMES": "MAEBackbone"}


def _skip_listed(cls):
    """Replace each test in SKIPS that `cls` has with a skip naming the reason."""
    for key, reason in SKIPS.items():
        owner, name = key if isinstance(key, tuple) else (cls.__name__, key)
        if owner == cls.__name__ and hasattr(cls, name):
            setattr(cls, name, unittest.skip(reason)(lambda self: None))
    return cls


class MAEModelTester:
    """Builds the tiny configs and inputs the mixins ask for (the shape of transformers' ViTMAEModelTester)."""

    def __init__(self, parent, model_class, batch_size=5, image_size=16, patch_size=4, num_channels=3,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=3,
                 mask_ratio=0.5, classifier_head="linear_probe", out_features=None):
        self.parent, self.model_class = parent, model_class
        self.batch_size, self.image_size, self.patch_size = batch_size, image_size, patch_size
        self.num_channels, self.hidden_size, self.num_hidden_layers = num_channels, hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.num_labels, self.type_sequence_label_size = num_labels, num_labels
        self.mask_ratio, self.classifier_head, self.out_features = mask_ratio, classifier_head, out_features
        self.is_training = True
        self.num_patches = num_patches = (image_size // patch_size) ** 2
        kept = int(num_patches * (1 - mask_ratio)) if model_class is MAEForPreTraining else num_patches
        self.seq_length = 1 + kept
        self.out_indices = None

    def get_config(self) -> MAEConfig:
        extra = {} if self.out_features is None else {"out_features": self.out_features}
        return MAEConfig(image_size=self.image_size, patch_size=self.patch_size, num_channels=self.num_channels,
                         hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                         num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
                         decoder_hidden_size=self.hidden_size, decoder_num_hidden_layers=1,
                         decoder_num_attention_heads=self.num_attention_heads,
                         decoder_intermediate_size=self.intermediate_size, mask_ratio=self.mask_ratio,
                         num_labels=self.num_labels, classifier_head=self.classifier_head, **extra)

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = self.model_class(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        if self.model_class is MAEForImageClassification:
            self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        elif self.model_class is MAEForPreTraining:
            patch_dim = self.patch_size**2 * self.num_channels
            self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_patches, patch_dim))
        else:
            self.parent.assertEqual(result.last_hidden_state.shape,
                                    (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_backbone(self, config, pixel_values, labels):
        model = MAEBackbone(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        grid = self.image_size // self.patch_size
        self.parent.assertEqual(len(result.feature_maps), len(config.out_features))
        for feature_map in result.feature_maps:
            self.parent.assertEqual(feature_map.shape, (self.batch_size, self.hidden_size, grid, grid))


class _MAEModelTestBase(ModelTesterMixin):
    model_class = MAEModel
    tester_kwargs: dict = {}
    test_resize_embeddings = False
    test_torch_exportable = False  # the export mixin is not in transformers' sdist (see transformers_sdist)

    @property
    def all_model_classes(self):
        return (self.model_class,)

    def setUp(self):
        _register_names(self)
        self.model_tester = MAEModelTester(self, self.model_class, **self.tester_kwargs)
        self.config_tester = configuration_common.ConfigTester(self, config_class=MAEConfig, has_text_modality=False,
                                                               hidden_size=36, num_attention_heads=4)

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_model_get_set_embeddings(self):
        """transformers' ViTMAE test replaces the mixin's version (which wants an nn.Embedding) with this: the
        input embedding of a vision model is its patch embedding module."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = self.model_class(config)
        self.assertIsInstance(model.get_input_embeddings(), torch.nn.Module)
        self.assertIs(model.get_input_embeddings(), model.base_model.patch_embed)
        output_embeddings = model.get_output_embeddings()
        self.assertTrue(output_embeddings is None or isinstance(output_embeddings, torch.nn.Linear))


@_skip_listed
class MAEModelTest(_MAEModelTestBase, unittest.TestCase):
    model_class = MAEModel


@_skip_listed
class MAEForPreTrainingTest(_MAEModelTestBase, unittest.TestCase):
    model_class = MAEForPreTraining


@_skip_listed
class MAEForImageClassificationLinearProbeTest(_MAEModelTestBase, unittest.TestCase):
    model_class = MAEForImageClassification
    tester_kwargs = {"classifier_head": "linear_probe"}


@_skip_listed
class MAEForImageClassificationFinetuneTest(_MAEModelTestBase, unittest.TestCase):
    model_class = MAEForImageClassification
    tester_kwargs = {"classifier_head": "finetune"}


@_skip_listed
class MAEBackboneTest(backbone_common.BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (MAEBackbone,)
    config_class = MAEConfig
    has_attentions = True

    def setUp(self):
        _register_names(self)
        self.model_tester = MAEModelTester(self, MAEBackbone, out_features=["stage1", "stage2"])

    def test_backbone(self):
        self.model_tester.create_and_check_backbone(*self.model_tester.prepare_config_and_inputs())


class MAEImageProcessingTester(image_processing_common.ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        defaults = {"batch_size": 7, "num_channels": 3, "min_resolution": 30, "max_resolution": 80,
                    "do_resize": True, "size": {"shortest_edge": 16}, "crop_pct": 0.875, "do_center_crop": True,
                    "crop_size": {"height": 16, "width": 16}, "do_normalize": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "patch_size": 4, "num_labels": 3}
        super().__init__(parent, **{**defaults, **kwargs})

    def _get_image_processing_classes(self):
        return {"pil": MAEImageProcessor, "torchvision": MAEImageProcessorFast}

    def prepare_post_process_semantic_segmentation_inputs(self):
        """The mixin's inputs, sized by the crop (the mixin reads size["height"], which is the crop here)."""
        height, width = self.crop_size["height"], self.crop_size["width"]
        logits = torch.randn(self.batch_size, self.num_labels, height, width)
        inputs = {"outputs": image_processing_common.SemanticSegmenterOutput(logits=logits)}
        return inputs, {"num_labels": self.num_labels, "height": height, "width": width}


@_skip_listed
class MAEImageProcessingTest(image_processing_common.ImageProcessingTestMixin,
                             image_processing_common.PostProcessSemanticSegmentationTestMixin, unittest.TestCase):
    image_processor_tester_class = MAEImageProcessingTester


def test_hf_mae_registered():
    """The Auto classes the mixins go through resolve to hf_mae's (importing hf_mae registers them)."""
    from transformers import AutoConfig

    assert AutoConfig.for_model("hf_mae").__class__ is MAEConfig
    assert hf_mae.MAEConfig is MAEConfig
