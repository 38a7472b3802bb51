"""Helpers every training stage shares (functions, not a base class): TRL config defaults, callbacks, LoRA."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from align.checkpoint import is_main_process, mark_complete

logger = logging.getLogger(__name__)


def trainer_defaults(stage_dir: Path, seed: int) -> dict[str, Any]:
    """Our defaults for any TRL config; the stage's ``trainer:`` block overrides them.

    CPU: ``use_cpu=True`` (no_cuda no longer exists; under DeepSpeed on CPU it is also what makes the world size
    right) and fp32 without gradient checkpointing, which is faster than TRL's bf16 + checkpointing for tiny models
    (STACK-NOTES).
    """
    cpu = not torch.cuda.is_available()
    return {
        "output_dir": str(stage_dir),
        "use_cpu": cpu,
        "bf16": False if cpu else torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,
        "report_to": "none",
        "logging_steps": 10,
        "save_steps": 100,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


class CompleteCheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete after the Trainer finished writing it (see ``align.checkpoint``)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if is_main_process():
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                mark_complete(ckpt)


class LossHistoryCallback(TrainerCallback):
    """Keeps every logged record (loss, aux_loss, rewards...) for the manifest."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            self.records.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, int | float)}})


@contextlib.contextmanager
def typed_checkpoint_configs() -> Iterator[None]:
    """Make ``PreTrainedConfig.from_json_file`` build the config class the file names.

    On resume, HF Trainer reads the checkpoint's ``config.json`` through the *base* ``PreTrainedConfig`` (only to
    compare versions); with DeepSeek-V4 that runs the base class's strict layer-type validator, which rejects
    ``mlp_layer_types: [hash_moe, moe]`` and kills every resume. Dispatching on ``model_type`` fixes it.
    """
    from transformers import PreTrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    original = PreTrainedConfig.__dict__["from_json_file"]

    def from_json_file(cls: type, json_file: str) -> Any:
        if cls is PreTrainedConfig:
            model_type = json.loads(Path(json_file).read_text()).get("model_type")
            if model_type in CONFIG_MAPPING:
                cls = CONFIG_MAPPING[model_type]
        return original.__func__(cls, json_file)

    PreTrainedConfig.from_json_file = classmethod(from_json_file)
    try:
        yield
    finally:
        PreTrainedConfig.from_json_file = original


def train(trainer: Any, stage_dir: Path) -> Any:
    """``trainer.train()``, resuming from the stage's last *complete* checkpoint if there is one."""
    from align.checkpoint import last_complete_checkpoint

    resume = last_complete_checkpoint(stage_dir)
    if resume:
        logger.info("resuming from %s", resume)
    with typed_checkpoint_configs():
        return trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def loss_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First and last logged training loss (and aux loss) from a Trainer's ``state.log_history``."""
    losses = [r["loss"] for r in log_history if "loss" in r]
    aux = [r["aux_loss"] for r in log_history if "aux_loss" in r]
    out: dict[str, Any] = {}
    if losses:
        out.update(train_loss_first=losses[0], train_loss_last=losses[-1])
    if aux:
        out.update(aux_loss_first=aux[0], aux_loss_last=aux[-1])
    return out


def lora_targets(model: torch.nn.Module, groups: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(target_modules, target_parameters) for peft, found structurally.

    attention: ``nn.Linear`` children of ``*attn*`` modules; mlp: dense/shared-expert linears; router: the ``gate`` /
    ``router`` weight of each MoE block; experts: the fused 3-D expert parameters (peft ``target_parameters``) or the
    per-expert linears of a ``ModuleList`` MoE.
    """
    from align.moe import find_moe_blocks

    # Full dotted names, not leaf names: peft matches target_modules by suffix, so a leaf name like "kv_proj" would
    # also catch DeepSeek-V4's compressor.kv_proj.
    modules: set[str] = set()
    params: set[str] = set()
    blocks = dict(find_moe_blocks(model))
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or type(module) is not torch.nn.Linear:
            continue  # subclasses (e.g. grouped projections) have their own forward peft cannot wrap
        leaf = name.rsplit(".", 1)[-1]
        if "attention" in groups and ".self_attn." in name and ".compressor." not in name:
            modules.add(name)
        if "mlp" in groups and (".shared_expert" in name or (".mlp." in name and ".experts" not in name and leaf != "gate")):
            modules.add(name)
        if "experts" in groups and ".experts." in name:
            modules.add(name)
    for bname, block in blocks.items():
        router_name = "gate" if hasattr(block, "gate") else "router"
        router = getattr(block, router_name)
        if "router" in groups:
            if type(router) is torch.nn.Linear:
                modules.add(f"{bname}.{router_name}")
            elif isinstance(getattr(router, "weight", None), torch.nn.Parameter):
                params.add(f"{bname}.{router_name}.weight")
        if "experts" in groups:
            for pname, p in block.experts.named_parameters(recurse=False):
                if p.dim() == 3:
                    params.add(f"{bname}.experts.{pname}")
    return sorted(modules), sorted(params)


def wrap_lora(model: torch.nn.Module, lora: Any) -> torch.nn.Module:
    """Add LoRA adapters on the configured groups; everything else is frozen."""
    from peft import LoraConfig, get_peft_model

    modules, params = lora_targets(model, lora.targets)
    if not modules and not params:
        raise ValueError(f"lora.targets {list(lora.targets)}: no matching modules in {type(model).__name__}")
    cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=modules or None,
        target_parameters=params or None, task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    logger.info("LoRA on %d modules and %d parameters: %d trainable parameters", len(modules), len(params), trainable)
    return peft_model
