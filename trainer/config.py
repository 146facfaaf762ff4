"""The run configuration: pydantic sections, YAML files, dotted command-line overrides.

    torchrun trainer/main.py configs/author.yaml optim.lr=1e-4 run.out_dir=runs/x

Every section forbids unknown keys, so a typo fails loudly with the field, the file and what is
allowed. Each module is handed its own section (`make_train_loader(cfg.data.train, ...)`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from dali_pipelines.config import EvalDataConfig, Section, TrainDataConfig


class RunConfig(Section):
    out_dir: str  # run folder: config.yaml, checkpoints/, tb/, metrics.jsonl, eval/
    seed: int = 0  # model initialisation and dropout; the data stream has its own seed (data.train.seed)
    log_every: int = Field(10, gt=0)  # steps between console lines and TensorBoard scalars
    deterministic: bool = False  # torch.use_deterministic_algorithms + cuDNN deterministic, no cuDNN benchmark (CPU runs are deterministic anyway)
    threads: int | None = Field(None, gt=0)  # torch intra-op threads per rank; None = torch's default
    sample_log: bool = False  # each rank appends the sample keys of every step to samples/rank<r>.jsonl
    resume: Literal["auto", "force"] = "auto"  # auto: resume only a run whose stored config matches (outside RESUME_MAY_CHANGE); force: resume it anyway


class DataConfig(Section):
    train: TrainDataConfig  # its batch_size is derived: global_batch / world_size (do not set it)
    global_batch: int = Field(88, gt=0)  # clips per optimizer step over all ranks
    stage_dir: str | None = None  # a node-local folder: shard sets given as URLs (s3://, gs://, http(s)://) are copied there (sharding.stage) by each node's first rank, then read locally

    @model_validator(mode="after")
    def _batch_is_derived(self):
        if "batch_size" in self.train.model_fields_set:
            raise ValueError("data.train.batch_size is derived from data.global_batch / world size: "
                             "set data.global_batch instead")
        return self


class TestSetConfig(Section):
    name: str  # the name in metrics.jsonl, TensorBoard and eval/<name>_e<epoch>.npz (ucf101, hmdb51, ...)
    shards: str  # a `--split eval` shard folder or its _info.json
    generalized: bool = False  # also rank against every other class of the run, training and test (generalized zero-shot)
    seen: bool = False  # classes that were trained on (seen-class accuracy): skips the overlap check


# The evaluation loaders' own settings, with EvalDataConfig's types, defaults, limits and comments: the
# trainer's eval section is derived from the loader section, so the two cannot drift apart. The clip
# geometry and standardization come from data.train (EVAL_FROM_TRAIN); shards and num_clips per call;
# every other loader field (batch_size, clip_positions, num_threads, prefetch, py_workers, device, ...)
# is an eval.* key.
EVAL_FROM_TRAIN = ("clip_len", "stride", "crop", "resize_short", "standardization", "seed")
EVAL_LOADER_FIELDS = tuple(k for k in EvalDataConfig.model_fields if k not in (*EVAL_FROM_TRAIN, "shards", "num_clips"))
_EvalLoaderSection = create_model(
    "_EvalLoaderSection", __base__=Section,
    **{k: (EvalDataConfig.model_fields[k].annotation, EvalDataConfig.model_fields[k]) for k in EVAL_LOADER_FIELDS})


class EvalConfig(_EvalLoaderSection):
    # plus the EVAL_LOADER_FIELDS: see EvalDataConfig
    sets: list[TestSetConfig] = []  # test sets; their classes must not overlap the training classes by name
    every_epochs: int = Field(5, ge=0)  # quick evaluation every K epochs (0: only at the end)
    quick_clips: int = Field(1, gt=0)  # clips per video in the quick evaluations during training
    clips: int = Field(25, gt=0)  # clips per video at the end and with --eval-only

    def data(self, test_set: TestSetConfig, train: TrainDataConfig, clips: int) -> EvalDataConfig:
        """The loader section of one test set; clip geometry and standardization follow training."""
        return EvalDataConfig(shards=test_set.shards, num_clips=clips,
                              **{k: getattr(self, k) for k in EVAL_LOADER_FIELDS},
                              **{k: getattr(train, k) for k in EVAL_FROM_TRAIN})


class EmbeddingConfig(Section):
    kind: Literal["word_vectors", "sentence_transformer"] = "word_vectors"  # how a class text becomes a vector; the head's size follows it
    vectors: str | None = None  # kind word_vectors: fastText .bin, word2vec .bin, or .vec/.txt
    model: str | None = None  # kind sentence_transformer: a local sentence-transformers model folder (nothing is downloaded)
    cache: str | None = None  # class-embedding cache (.npz); None = <out_dir>/class_embeddings.npz
    normalize_words: bool = True  # unit-normalise each word vector before the mean (the paper's code does: init_sims)
    format: Literal["auto", "fasttext", "word2vec-bin", "word2vec-text", "gensim"] = "auto"  # auto: sniffed, data formats only; gensim (KeyedVectors.save, a pickle) also needs trusted
    trusted: bool = False  # allow pickle-based vector files (format gensim): loading one runs code from the file
    lemmatize_verbs: bool = False  # verbs in base form before embedding, "playing guitar" -> "play guitar" (the paper's code does)
    class_texts: str | None = None  # YAML/JSON map class -> text or list of texts (averaged) to embed instead of the name

    @model_validator(mode="after")
    def _encoder_given(self):
        need, other = ("model", "vectors") if self.kind == "sentence_transformer" else ("vectors", "model")
        if getattr(self, need) is None or getattr(self, other) is not None:
            raise ValueError(f"embeddings.kind {self.kind} takes embeddings.{need} (and not embeddings.{other})")
        return self


class ModelConfig(Section):
    backbone: Literal["r2plus1d_18", "r2plus1d_10", "custom"] = "r2plus1d_18"  # custom: widths + layers
    widths: list[int] | None = None  # custom backbone: channels of layer1..4
    layers: list[int] | None = None  # custom backbone: blocks per layer
    dropout: float = Field(0.05, ge=0, lt=1)  # before the regressor (the paper: 0.05)
    init: str | None = None  # backbone weights: a torchvision r2plus1d_18 state_dict, one of our checkpoints, or a run folder (its newest checkpoint)
    channels_last: bool = False  # torch.channels_last_3d memory format (faster convolutions on GPUs and, for narrow nets, on CPUs)
    compile: bool = False  # torch.compile the model

    @model_validator(mode="after")
    def _custom_needs_shape(self):
        if self.backbone == "custom" and (not self.widths or not self.layers or len(self.widths) != 4
                                          or len(self.layers) != 4):
            raise ValueError("model.backbone 'custom' needs model.widths and model.layers with 4 entries each")
        return self


class OptimConfig(Section):
    epochs: int = Field(70, gt=0)  # the schedule counts epochs; an epoch is data.train.epoch_clips clips
    lr: float = Field(1e-3, gt=0)  # Adam learning rate of the first epochs
    lr_milestones: list[int] = [40, 61]  # after these many epochs the LR is multiplied by lr_gamma
    lr_gamma: float = Field(0.1, gt=0)  # 1e-3 -> 1e-4 (epochs 41-61) -> 1e-5 (62-70)
    weight_decay: float = Field(0.0, ge=0)  # Adam weight decay
    amp: Literal["bf16", "none"] = "bf16"  # autocast dtype on CUDA (CPU runs in float32)
    grad_clip: float | None = Field(None, gt=0)  # clip the gradient norm; None = off
    nonfinite_grads: Literal["skip", "stop"] = "skip"  # a step whose gradient norm is inf/NaN on any rank: skip its update (counted, logged, TensorBoard train/skipped_steps) or stop the run

    @model_validator(mode="after")
    def _milestones_sorted(self):
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ValueError(f"optim.lr_milestones must be increasing, got {self.lr_milestones}")
        return self


class CheckpointConfig(Section):
    every_steps: int = Field(1000, gt=0)  # also at every epoch end and on SIGTERM/SIGINT
    keep_last: int = Field(3, gt=0)  # older checkpoints are deleted


class TrainConfig(Section):
    run: RunConfig
    data: DataConfig
    eval: EvalConfig = EvalConfig()
    embeddings: EmbeddingConfig
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    @model_validator(mode="after")
    def _urls_need_a_stage_dir(self):
        from sharding.stage import is_url

        urls = [f"data.train.shards ({self.data.train.shards})"] if is_url(self.data.train.shards) else []
        urls += [f"eval.sets[{i}].shards ({ts.shards})" for i, ts in enumerate(self.eval.sets) if is_url(ts.shards)]
        if urls and not self.data.stage_dir:
            raise ValueError(f"{', '.join(urls)} is a URL: set data.stage_dir to a local folder to stage it into "
                             "(or copy it yourself with `python -m sharding.stage URL DIR` and give DIR)")
        return self


class ConfigError(ValueError):
    """A config that does not validate; the message names the file, the field and what is allowed."""


def parse_override(item: str) -> tuple[list[str], object]:
    """`optim.lr=1e-4` -> (['optim', 'lr'], 0.0001); values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=1e-4)")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for k in path[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
            node = node[k]
        node[path[-1]] = value
    return raw


def _explain(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (typo?)")
        else:
            lines.append(f"  {loc}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""))
    return "\n".join(lines)


def load_config(source: str | Path | dict, overrides: list[str] = (), name: str | None = None) -> TrainConfig:
    """Read a YAML config (or take a dict of the same shape), apply `key=value` overrides, validate.

    Args:
        source: a YAML file, or the parsed config as a dict (not modified: overrides apply to a copy).
        overrides: dotted `key=value` items, values parsed as YAML.
        name: what error messages call a dict source (default "the config").

    Raises:
        ConfigError: the file is missing or not YAML, or a field is unknown or invalid.
    """
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
        label = name or "the config"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        label = name or str(path)
    raw = apply_overrides(raw, list(overrides))
    label += f" with overrides {list(overrides)}" if overrides else ""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e, label)) from None


# Fields that may differ between a run's stored config and the command that resumes it: they change
# how the run is observed or fed, not what it computes ("eval.*": every key under eval).
RESUME_MAY_CHANGE = ("run.out_dir", "run.resume", "run.log_every", "run.threads", "run.sample_log", "eval.*",
                     "data.train.num_threads", "data.train.prefetch", "data.train.py_workers", "data.train.verify",
                     "data.stage_dir",
                     "embeddings.cache",
                     "checkpoint.every_steps", "checkpoint.keep_last")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def resume_conflicts(stored: dict, cfg: TrainConfig) -> list[str]:
    """`key: stored -> current` for every field outside RESUME_MAY_CHANGE where the config a run was
    started with (`stored`: a checkpoint's or config.yaml's dict) differs from `cfg`."""
    try:  # fill the defaults of fields newer than the stored config, so they do not count as changed
        raw = copy.deepcopy(stored)
        raw.get("data", {}).get("train", {}).pop("batch_size", None)  # dumped, but derived (not settable)
        stored = load_config(raw).model_dump(mode="json")
    except ConfigError:
        pass  # written by another version: compare what is there
    old, new = _flat(stored), _flat(cfg.model_dump(mode="json"))

    def may_change(key: str) -> bool:
        return any(key == m or (m.endswith(".*") and key.startswith(m[:-1])) for m in RESUME_MAY_CHANGE)

    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and not may_change(k)]


def stored_config(out_dir: str | Path) -> dict | None:
    """The config.yaml a run wrote into `out_dir` (the record of a run that has no checkpoint yet)."""
    path = Path(out_dir) / "config.yaml"
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def check_resume(stored: dict | None, cfg: TrainConfig, source) -> list[str]:
    """Refuse to continue another run: the config a run folder's run was started with (`stored`, read
    from `source`: its checkpoint or config.yaml; None for an empty folder) must equal `cfg` outside
    RESUME_MAY_CHANGE. Returns the differences that `run.resume: force` lets through.

    Raises:
        ConfigError: they differ (and run.resume is auto), listing the fields and the two ways out.
    """
    diff = resume_conflicts(stored, cfg) if stored is not None else []
    if not diff or cfg.run.resume == "force":
        return diff
    raise ConfigError(
        f"run.out_dir {cfg.run.out_dir} holds another run: its config ({source}) differs from this one in\n  "
        + "\n  ".join(diff) + f"\nOnly these may change when a run is resumed: {', '.join(RESUME_MAY_CHANGE)}. "
        "Start a new run with another run.out_dir, or continue this one with these changes: run.resume=force.")


def lr_at(optim: OptimConfig, epoch: int) -> float:
    """Step schedule by epoch (0-based): lr * gamma^(milestones passed).

    With the defaults: 1e-3 for epochs 0-39 (the paper's 1-40), 1e-4 for 40-60, 1e-5 from 61 on.
    """
    passed = sum(epoch >= m for m in optim.lr_milestones)
    return optim.lr * optim.lr_gamma ** passed
