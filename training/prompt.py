"""Box-prompted SAM-family training (LiteMedSAM, SAM, MedSAM, LVM-Med ViT): the mask decoder (and
optionally the image encoder) learns from boxes derived from the labels, with jitter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_medseg.errors import MedsegError
from napari_medseg.progress import Progress

from .datasets import Case, box_of, jittered_box, object_samples
from .families import Adapter, atomic_torch_save, dice_score
from .losses import BinaryDiceCELoss

def model_frame(profile: str, size: int, hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) the image occupies in the model's square input frame (as the inference profiles resize)."""
    if profile in ("medsam", "lvm_med_vit"):
        return size, size
    scale = size / max(hw)
    return int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5)


def logits_target(mask: np.ndarray, frame: tuple[int, int], size: int, grid: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(target, valid) on the decoder's ``grid`` x ``grid`` logits: the mask area-resized to where the
    image lies in that grid (soft edges), the padding outside marked invalid."""
    from skimage.transform import resize

    h, w = (max(1, round(frame[0] * grid / size)), max(1, round(frame[1] * grid / size)))
    target = np.zeros((grid, grid), np.float32)
    valid = np.zeros((grid, grid), np.float32)
    target[:h, :w] = resize(mask.astype(np.float32), (h, w), order=1, anti_aliasing=True)
    valid[:h, :w] = 1
    return target, valid


class PromptModule(nn.Module):
    """Box-prompted training forward of a SAM-family network: loss of a batch of (slice, box, mask)."""

    def __init__(self, network, profile, train_encoder: bool, iou_weight: float):
        super().__init__()
        self.network, self.profile = network, profile
        self.train_encoder, self.iou_weight = train_encoder, iou_weight
        self.loss = BinaryDiceCELoss()
        self.embeddings: torch.Tensor | None = None  # frozen encoder: (training slices, C, 64, 64) float16
        self.has_unused_parameters = False

    def encode(self, batch: dict) -> torch.Tensor:
        if not self.train_encoder:
            return self.embeddings[batch["slice"].to(self.embeddings.device)].to(batch["boxes"].device).float()
        inputs = [self.profile.encoder_input(rgb.cpu().numpy())[0] for rgb in batch["rgb"]]
        return self.network.image_encoder(torch.cat(inputs))

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 256, 256) logits and (B, 1) IoU predictions, one box per image."""
        prompt_encoder, decoder = self.network.prompt_encoder, self.network.mask_decoder
        sparse, dense = prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        position = prompt_encoder.get_dense_pe()
        outputs = [decoder(image_embeddings=embeddings[i:i + 1], image_pe=position,
                           sparse_prompt_embeddings=sparse[i:i + 1], dense_prompt_embeddings=dense[i:i + 1],
                           multimask_output=False) for i in range(len(boxes))]
        return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])

    def forward(self, batch: dict) -> torch.Tensor:
        logits, iou = self.decode(self.encode(batch), batch["boxes"])
        target, valid = batch["target"], batch["valid"]
        loss = self.loss(logits, target, valid)
        if self.iou_weight:
            with torch.no_grad():
                predicted = (logits > 0).float() * valid
                truth = (target > 0.5).float()
                dims = (1, 2, 3)
                overlap = (predicted * truth).sum(dims)
                union = (predicted + truth).clamp(max=1).sum(dims)
                actual = overlap / union.clamp_min(1.0)
            loss = loss + self.iou_weight * torch.nn.functional.mse_loss(iou[:, 0].float(), actual)
        return loss


class PromptAdapter(Adapter):
    """LiteMedSAM, SAM, MedSAM and LVM-Med ViT: the mask decoder is trained (the prompt encoder stays
    frozen, as in MedSAM and LVM-Med); ``train_encoder`` fine-tunes the image encoder too. Slices are
    shown to the model exactly as the Segment widget does (the image's default display window, then the
    family's own resize and normalisation from `napari_medseg.inference.box2d`)."""

    def __init__(self, loaded, model_id, device, options=None):
        from napari_medseg.inference.box2d import PROFILES
        from napari_medseg.models.sam_family import use_fused_attention

        super().__init__(loaded, model_id, device, options)
        self.profile_name = loaded.preprocessing["profile"]
        self.size = int(loaded.preprocessing["image_size"])
        self.network.to(self.device)
        use_fused_attention(self.network.image_encoder)
        self.profile = PROFILES[self.profile_name](self.network, self.size)
        self.module = PromptModule(self.network, self.profile, self.options.train_encoder, self.options.iou_loss_weight)
        for name, parameter in self.network.named_parameters():
            parameter.requires_grad = name.startswith("mask_decoder.") or (
                self.options.train_encoder and name.startswith("image_encoder."))
        self.weights_file = {"lite_medsam": "lite_medsam.pth", "medsam": "medsam_vit_b.pth",
                             "lvm_med_vit": "lvmmed_vit_sam.pth"}.get(self.family, "sam_vit.pth")
        self.classes = {0: "background", 1: "object"}

    # ---- data
    def prepare(self, train_cases: list[Case], val_cases: list[Case], progress=None, cancel=None) -> None:
        from napari_medseg.inference.box2d import to_uint8_rgb
        from napari_medseg.inference.intensity import display_limits

        self.train_samples = object_samples(train_cases, self.options.min_object_pixels)
        self.val_samples = object_samples(val_cases, self.options.min_object_pixels)
        self.slices: dict[tuple, int] = {}
        self.rgb: list[np.ndarray] = []
        self.planes: list[np.ndarray] = []
        for cases, samples, tag in ((train_cases, self.train_samples, "train"), (val_cases, self.val_samples, "val")):
            limits = {}
            for c, index, _ in samples:
                key = (tag, c, index)
                if key in self.slices:
                    continue
                case = cases[c]
                if c not in limits:
                    limits[c] = None if case.image.is_rgb else display_limits(case.image.array, case.image.intensity)
                image, labels = case.plane(index)
                self.slices[key] = len(self.rgb)
                self.rgb.append(to_uint8_rgb(image, limits[c]))
                self.planes.append(labels)
        self.train_keys = [self.slices[("train", c, i)] for c, i, _ in self.train_samples]
        self.val_keys = [self.slices[("val", c, i)] for c, i, _ in self.val_samples]
        self.val_embeddings = None
        if not self.options.train_encoder:
            self.module.embeddings, self.val_embeddings = self._embed_all(progress, cancel)

    def _embed_all(self, progress, cancel) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Embeddings of every slice with the frozen encoder, on the device if they fit: the training slices'
        in float16 (what the decoder learns from), the held-out slices' as inference computes them under
        ``options.precision`` (float32 for "faithful"), so validation scores the masks users get."""
        from napari_medseg.inference.box2d import native_bf16

        train_count = sum(tag == "train" for tag, _, _ in self.slices)  # slices are listed training first
        val_count = len(self.rgb) - train_count
        steps = Progress(len(self.rgb), "Embedding slices", progress=progress, cancel=cancel)
        store_device = self.device
        embeddings, val_embeddings = None, {}
        fast = self.options.precision == "fast" and native_bf16(self.device)
        self.network.image_encoder.eval()
        for i, rgb in enumerate(self.rgb):
            held_out = i >= train_count
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=held_out and fast):
                x, _ = self.profile.encoder_input(rgb)
                features = self.network.image_encoder(x).float()
            if embeddings is None:
                size_gb = features[0].numel() * (train_count * 2 + val_count * 4) / 1e9
                if size_gb > self.options.embedding_cache_gb:
                    raise MedsegError(f"{len(self.rgb)} slices need {size_gb:.1f} GB of embeddings; label fewer "
                                      "slices or raise embedding_cache_gb")
                if self.device.type == "cuda" and size_gb > 0.25 * torch.cuda.mem_get_info(self.device)[0] / 1e9:
                    store_device = torch.device("cpu")
                embeddings = torch.empty((train_count, *features.shape[1:]), dtype=torch.float16, device=store_device)
            if held_out:
                val_embeddings[i] = features.to(store_device)
            else:
                embeddings[i] = features[0].to(store_device, torch.float16)
            steps.step()
        return embeddings, val_embeddings

    def sample_count(self) -> int:
        return len(self.train_samples)

    def validation_count(self) -> int:
        return len(self.val_samples)

    def batch(self, indices: list[int], rngs: list[np.random.Generator]) -> dict:
        boxes, targets, valids, keys, images = [], [], [], [], []
        for index, rng in zip(indices, rngs):
            _, _, value = self.train_samples[index]
            key = self.train_keys[index]
            rgb, mask = self.rgb[key], self.planes[key] == value
            if self.options.train_encoder:  # the encoder sees the image: mirror it too
                if rng.random() < 0.5:
                    rgb, mask = rgb[:, ::-1], mask[:, ::-1]
                if rng.random() < 0.5:
                    rgb, mask = rgb[::-1], mask[::-1]
                images.append(torch.from_numpy(np.ascontiguousarray(rgb)))
            hw = mask.shape
            box = jittered_box(mask, rng, self.options.box_jitter)
            boxes.append(self.profile.box(box, hw))
            target, valid = logits_target(mask, model_frame(self.profile_name, self.size, hw), self.size)
            targets.append(target)
            valids.append(valid)
            keys.append(key)
        batch = {"slice": torch.tensor(keys), "boxes": torch.tensor(np.array(boxes), dtype=torch.float32),
                 "target": torch.from_numpy(np.stack(targets))[:, None], "valid": torch.from_numpy(np.stack(valids))[:, None]}
        if images:
            batch["rgb"] = images
        return batch

    def train_mode(self) -> None:
        self.network.eval()  # frozen parts keep their batch-norm statistics
        self.network.mask_decoder.train()
        if self.options.train_encoder:
            self.network.image_encoder.train()

    def eval_mode(self) -> None:
        self.network.eval()

    def param_groups(self, lr: float) -> list[dict]:
        decoder = [p for p in self.network.mask_decoder.parameters() if p.requires_grad]
        groups = [{"params": decoder, "lr": lr}]
        if self.options.train_encoder:
            encoder = [p for p in self.network.image_encoder.parameters() if p.requires_grad]
            groups.append({"params": encoder, "lr": lr * self.options.encoder_lr_ratio})
        return groups

    # ---- validation: the inference path's resize and threshold on held-out objects
    def predict_object(self, key: int, box: np.ndarray) -> np.ndarray:
        rgb = self.rgb[key]
        hw = rgb.shape[:2]
        input_hw = model_frame(self.profile_name, self.size, hw)
        if self.val_embeddings is None:
            from napari_medseg.inference.box2d import native_bf16

            x, input_hw = self.profile.encoder_input(rgb)
            fast = self.options.precision == "fast" and native_bf16(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=fast):  # as BoxPredictor
                embedding = self.network.image_encoder(x).float()
        else:
            embedding = self.val_embeddings[key].to(self.device)
        boxes = torch.as_tensor(self.profile.box(box, hw), dtype=torch.float32, device=self.device)[None]
        logits, _ = self.module.decode(embedding, boxes)
        return self.profile.mask(logits, input_hw, hw).cpu().numpy()

    def validate(self) -> float | None:
        if not self.val_samples:
            return None
        scores = []
        for (_, _, value), key in zip(self.val_samples, self.val_keys):
            truth = self.planes[key] == value
            predicted = self.predict_object(key, box_of(truth))
            scores.append(dice_score(predicted, truth))
        return float(np.mean(scores))

    # ---- result
    def save(self, path: Path, extra: dict | None = None) -> Path:
        """A plain state_dict with the official key layout (SAM, MedSAM, LiteMedSAM; LVM-Med's own
        fine-tuned checkpoints are full SAM state_dicts too)."""
        return atomic_torch_save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, path)
