"""Manifests, complete-checkpoint detection, and finalisation (``finalize`` for one process,
``finalize_trained`` for a trainer on any number of ranks).

HF Trainer writes ``checkpoint-N`` non-atomically, and on resume takes the highest-numbered one without checking it.
We mark a checkpoint complete *after* the Trainer has saved it: a marker listing every file with its size and SHA-256.
On resume, a checkpoint whose marker is missing or whose files do not match it (size *or* content: a same-size
corruption is caught too) is moved aside to ``incomplete-checkpoint-N`` (kept, not deleted), a log line says which
file failed, and the next one down is used. Hashing reads every byte once per save and once per resume: the price of
never resuming from damaged weights.

Resuming weights: transformers 5 saves some architectures (DeepSeek-V4) under their *original* checkpoint key names,
and HF Trainer's resume loads ``model.safetensors`` with ``strict=False`` and no key conversion, so it matched no key,
logged a warning and trained on from the stage's input model. ``load_checkpoint_weights`` loads through
``from_pretrained`` (which applies the model's key conversion) and refuses any missing, unexpected or mismatched key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from align.distributed import barrier, init_distributed, is_main_process  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

MARKER = "align_complete.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: Path, data: Any, pad_to: int = 0) -> None:
    """Write JSON via a temp file and rename, so a kill never leaves half a file; ``pad_to`` pads it with trailing
    spaces (still valid JSON) to that many bytes."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text + " " * max(0, pad_to - len(text)))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


MANIFEST_RESERVE = 64 << 10
"""Bytes a stage's ``running`` manifest occupies on disk (JSON padded with trailing spaces), so that its ``failed``
manifest can overwrite it in place when the disk is full."""


def write_manifest(path: Path, data: Any, reserve: bool = False) -> None:
    """Write a stage manifest atomically; ``reserve`` pads it to ``MANIFEST_RESERVE`` bytes.

    When the atomic write fails for lack of space (the usual way a stage fails on a full disk), the manifest is
    overwritten in place in the bytes it already holds: no new blocks are needed on ordinary filesystems (ext4, xfs,
    tmpfs; copy-on-write filesystems may still refuse). Trailing spaces keep it valid JSON.
    """
    try:
        write_json_atomic(path, data, MANIFEST_RESERVE if reserve else 0)
        return
    except OSError:
        size = path.stat().st_size if path.is_file() else 0
        compact = json.dumps(data, default=str).encode()
        if len(compact) > size:
            raise
    with path.open("r+b") as fh:
        fh.write(compact + b" " * (size - len(compact)))
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning("%s: written in place (the atomic write failed; disk full?)", path)


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None if missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (its weights do not fit the model)."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mark_complete(ckpt: Path) -> None:
    """Record every file of a saved checkpoint with its size and SHA-256 (the completion marker)."""
    files = {
        str(p.relative_to(ckpt)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MARKER
    }
    write_json_atomic(ckpt / MARKER, {"files": files, "time": time.time()})


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` is not a complete checkpoint (no marker, a file missing, resized or changed), or None."""
    marker = read_json(ckpt / MARKER)
    if not marker or not isinstance(marker.get("files"), dict):
        return f"no completion marker ({MARKER}); killed mid-save?"
    for rel, rec in marker["files"].items():
        p = ckpt / rel
        size, digest = (rec.get("size"), rec.get("sha256")) if isinstance(rec, dict) else (rec, None)
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, the marker recorded {size}"
        if digest is None:
            return f"{rel} has no content hash in the marker (written by an older align)"
        if file_sha256(p) != digest:
            return f"{rel} does not match its recorded SHA-256 (corrupted after it was saved)"
    if read_json(ckpt / "trainer_state.json") is None:
        return "trainer_state.json is missing or unreadable"
    return None


def last_complete_checkpoint(stage_dir: Path, move_aside: bool = True) -> Path | None:
    """The highest-numbered complete ``checkpoint-N``; incomplete ones above it are moved aside (``move_aside``)."""
    ckpts = sorted(
        (p for p in stage_dir.glob("checkpoint-*") if p.is_dir() and _CKPT.match(p.name)),
        key=lambda p: int(_CKPT.match(p.name).group(1)),
        reverse=True,
    )
    for ckpt in ckpts:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if not move_aside:
            continue
        aside = ckpt.with_name(f"incomplete-{ckpt.name}")
        n = 1
        while aside.exists():
            aside = ckpt.with_name(f"incomplete-{ckpt.name}.{n}")
            n += 1
        logger.warning("%s is not a complete checkpoint (%s); moved aside to %s, trying the one before", ckpt, problem,
                       aside.name)
        if is_main_process():
            ckpt.rename(aside)
    return None


def load_checkpoint_weights(model: Any, ckpt: Path) -> None:
    """Load the weights of ``ckpt`` (a Trainer checkpoint or any HF model dir) into ``model``, strictly.

    Through ``from_pretrained``, so the key conversion the model class declares is applied (see the module
    docstring); every missing, unexpected or shape-mismatched key is a ``CheckpointError`` naming the checkpoint and
    the model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from align.modeling import whole_model_load

    dtype = next(model.parameters()).dtype
    with whole_model_load():
        loaded, info = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, output_loading_info=True)
    what = f"{ckpt} does not fit the model being trained ({type(model).__name__} from {model.config._name_or_path})"
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        bad = sorted(str(k) for k in info.get(kind) or ())
        if bad:
            raise CheckpointError(f"{what}: {kind.replace('_', ' ')}: {', '.join(bad[:5])}"
                                  + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))
    try:
        with torch.no_grad():
            model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what}: {str(exc).splitlines()[0]}") from None
    del loaded


def dir_hash(path: Path, big: int = 256 << 20) -> str:
    """Content hash of a model directory (files over ``big`` bytes are hashed by size + first/last MiB)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.name in (MARKER, "manifest.json"):
            continue
        size = p.stat().st_size
        h.update(f"{p.relative_to(path)}\0{size}\0".encode())
        with p.open("rb") as fh:
            if size <= big:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def serving_config(model_dir: Path, input_dir: Path | None = None) -> None:
    """Make a saved model dir what an eval harness or inference server expects, not what training left in it:
    router-logit outputs off (on a left-padded batch they crash ``generate`` inside the load-balancing loss), the KV
    cache on, the special-token ids of the input model (trainers rewrite ``bos_token_id``), and a tokenizer that pads
    on the left (decoder-only batched generation)."""
    cfg_path = model_dir / "config.json"
    config = json.loads(cfg_path.read_text())
    config["use_cache"] = True
    if "output_router_logits" in config:
        config["output_router_logits"] = False
    source = read_json(input_dir / "config.json") if input_dir is not None else None
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if source and key in source:
            config[key] = source[key]
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_path = model_dir / "tokenizer_config.json"
    if tok_path.is_file():
        tok_cfg = json.loads(tok_path.read_text())
        tok_cfg["padding_side"] = "left"
        tok_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")


def finalize(model: Any, tok: Any, out_dir: Path, input_dir: Path | None = None) -> Path:
    """Save a plain HF model dir (LoRA merged) + tokenizer atomically (to ``out_dir.tmp`` then rename), with the
    serving config (``serving_config``; special-token ids from ``input_dir``)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    serving_config(tmp, input_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's behaviour."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("align", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "math-verify"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The repository commit of the code that ran, if it is a git checkout."""
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _finalize_expert_parallel(trainer: Any, tok: Any, ctx: Any, out: Path) -> Path:
    """``final/`` of an AutoEP run: every rank joins the gather (``consolidated_state_dict``); rank 0 loads it into the
    input model's architecture, strictly (a missing or unexpected key is an error, not a silently random weight), and
    writes the plain HF dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.distributed import ds_config_path
    from align.expert_parallel import consolidated_state_dict, ep_report
    from align.modeling import whole_model_load

    preset = json.loads(ds_config_path().read_text())["expert_parallel"]["preset_model"]
    state = consolidated_state_dict(trainer.model, preset)
    # the check that final/ is the trained model: the expert-parallel model's logits on a probe batch (every rank takes
    # part: its layers all-to-all), compared on rank 0 with the consolidated model's
    vocab = trainer.model.config.get_text_config().vocab_size
    probe = torch.arange(2 * 12).reshape(2, 12) % max(1, vocab - 3) + 3  # [2, 12] ids past the first special tokens
    was_training = trainer.model.training
    trainer.model.eval()
    with torch.no_grad():
        ep_logits = trainer.model(input_ids=probe.to(trainer.model.device)).logits.float().cpu()
    trainer.model.train(was_training)
    report = ep_report(trainer.model, preset)
    if is_main_process():
        with whole_model_load():
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ctx.init_dir))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{ctx.stage_dir}: the expert-parallel model does not map back onto "
                                  f"{ctx.init_dir}'s architecture (missing {missing[:5]}, unexpected {unexpected[:5]})")
        model.eval()
        with torch.no_grad():
            diff = (model(input_ids=probe).logits.float() - ep_logits).abs().max().item()
        report["final_max_logit_diff"] = diff
        if diff > 1e-3:
            raise CheckpointError(f"{ctx.stage_dir}: the consolidated model's logits differ from the expert-parallel "
                                  f"model's by {diff:.3g} (max abs) on a probe batch; final/ not written")
        logger.info("expert parallelism: final/ consolidated from %d expert-parallel layers; logits match the "
                    "expert-parallel model to %.2g", len(report["layers"]), diff)
        finalize(model, tok, out, ctx.init_dir)
    trainer.expert_parallel = report
    barrier()
    return out


def finalize_trained(trainer: Any, tok: Any, ctx: Any) -> Path:
    """``final/``: a plain HF model dir written once. Single process: ``checkpoint.finalize`` (LoRA merged). Under
    DeepSpeed / several ranks: every rank joins ``trainer.save_model`` (ZeRO-3 gathers the partitioned weights; rank 0
    writes), rank 0 merges LoRA adapters into the input model if any, then renames into place; all ranks wait."""
    out = ctx.stage_dir / "final"
    if not (getattr(trainer, "is_deepspeed_enabled", False) or trainer.args.world_size > 1):
        return finalize(trainer.model, tok, out, ctx.init_dir)
    from align.expert_parallel import ep_layers

    if ep_layers(trainer.model):  # AutoEP: experts gathered from their ranks back into the HF layout
        return _finalize_expert_parallel(trainer, tok, ctx, out)
    tmp = out.with_name("final.gathered")  # not final.tmp: checkpoint.finalize (the LoRA merge below) writes there
    if is_main_process() and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    trainer.save_model(str(tmp))
    if is_main_process():
        if (tmp / "adapter_config.json").is_file():  # LoRA: merge the saved adapter into the input model
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            from align.modeling import whole_model_load

            with whole_model_load():  # rank 0 alone: outside the trainer's ZeRO-3 partitioning
                base = AutoModelForCausalLM.from_pretrained(ctx.init_dir)
            merged = PeftModel.from_pretrained(base, tmp).merge_and_unload()
            finalize(merged, tok, out, ctx.init_dir)
            shutil.rmtree(tmp)
        else:
            tok.save_pretrained(tmp)
            serving_config(tmp, ctx.init_dir)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    barrier()
    return out
