"""The shape director's LoRA fine-tuning (direct2v/director/shape_training.py) and the merge
(direct2v/bundled/models.py ``merge_director``), on a tiny random Llama with SmolLM2's real
tokenizer and chat template: the loss is on the answer and end token only, training lowers it,
a resumed run ends where an uninterrupted one does, the merged model answers as the adapter does,
bit for bit the same on every build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from direct2v.bundled.models import merge_director
from direct2v.core.training import CheckpointError
from direct2v.director import shape_data as dd
from direct2v.director import shape_training as dt
from direct2v.shape_world import stories as st



@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer, 32-wide random Llama with SmolLM2's tokenizer, saved like the real base."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)  # built from the GGUF if missing
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _config(**overrides) -> dt.DirectorTrainConfig:
    settings = {"steps": 4, "batch_size": 2, "lr": 2e-2, "warmup": 1, "lora_rank": 4, "lora_alpha": 8,
                "lora_dropout": 0.1, "frames_choices": (4,), "checkpoint_every": 2, "threads": 1,
                "adapter_dtype": "float32", "compute": "float32"}
    return dt.DirectorTrainConfig(**(settings | overrides))


EXCLUDE = frozenset()


def test_the_loss_covers_exactly_the_answer_and_the_end_token(tiny_base):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base, local_files_only=True)
    example = dd.examples(1, seed=2, exclude=EXCLUDE)[0]
    ids, labels = dt.encode_example(tokenizer, example.messages, example.answer, 640)
    request = dt.request_text(tokenizer, example.messages)
    assert request.endswith("<|im_start|>assistant\n") and "<|im_start|>system\n" in request
    assert example.messages[0]["content"] in request
    start = labels.index(next(label for label in labels if label != dt.IGNORE))
    assert all(label == dt.IGNORE for label in labels[:start])
    assert labels[start:] == ids[start:]
    assert tokenizer.decode(ids[:start]) == request
    assert tokenizer.decode(ids[start:]) == example.answer + "<|im_end|>"
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # the template closes an assistant turn with exactly that token (then a newline the model need not write)
    turn = tokenizer.apply_chat_template([*example.messages, {"role": "assistant", "content": example.answer}],
                                         tokenize=False)
    assert turn == request + example.answer + "<|im_end|>\n"
    batch = dt.collate([(ids, labels), (ids[:-3], labels[:-3])], pad_id=tokenizer.pad_token_id)
    assert batch["attention_mask"][1].sum() == len(ids) - 3 and (batch["labels"][1, len(ids) - 3 :] == dt.IGNORE).all()
    with pytest.raises(ValueError, match="longer than max_length"):
        dt.encode_example(tokenizer, example.messages, example.answer, 32)


def test_a_storyline_run_trains_on_the_storyline_answers_and_an_older_checkpoint_resumes_as_frames(tiny_base, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base, local_files_only=True)
    trainer = dt.DirectorTrainer(_config(answer="storyline"), tiny_base, tmp_path / "story", EXCLUDE)
    rng = np.random.default_rng([0, 0])  # step 0's draws (rows() seeds each step by (seed, step))
    wanted = [dd.random_example(rng, EXCLUDE, (4,), 0, dd.KIND_WEIGHTS, "storyline") for _ in range(2)]
    answers = [tokenizer.decode([t for t, label in zip(ids, labels) if label != dt.IGNORE]) for ids, labels in
               trainer.rows(0)]
    assert answers == [example.answer + "<|im_end|>" for example in wanted]
    assert all(st.parse_storyline(example.answer)[1] is None for example in wanted)
    # a checkpoint written before ``answer`` existed was a frames run: it resumes as one, not as a storyline run
    frames = dt.DirectorTrainer(_config(), tiny_base, tmp_path / "old", EXCLUDE)
    frames.save_checkpoint()
    state = torch.load(frames.checkpoint_path, weights_only=True)
    del state["config"]["answer"]
    torch.save(state, frames.checkpoint_path)
    assert dt.DirectorTrainer(_config(), tiny_base, tmp_path / "old", EXCLUDE).load_checkpoint()
    with pytest.raises(CheckpointError, match="other settings"):
        dt.DirectorTrainer(_config(answer="storyline"), tiny_base, tmp_path / "old", EXCLUDE).load_checkpoint()


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_base, tmp_path):
    trainer = dt.DirectorTrainer(_config(lora_dropout=0.0), tiny_base, tmp_path / "work", EXCLUDE)
    fixed = trainer.batch(0)
    with torch.no_grad():
        before = float(trainer.loss(fixed))
    for step in range(4):
        trainer.step(0)  # the same batch each time
    with torch.no_grad():
        after = float(trainer.loss(fixed))
    assert after < before - 0.05, (before, after)


def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_does(tiny_base, tmp_path, monkeypatch):
    straight = dt.train_director(_config(), tiny_base, tmp_path / "straight", tmp_path / "work-straight",
                                 echo=lambda _: None, exclude=EXCLUDE)
    real_step = dt.DirectorTrainer.step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(dt.DirectorTrainer, "step", interrupted)
    said = []
    with pytest.raises(KeyboardInterrupt):
        dt.train_director(_config(), tiny_base, tmp_path / "resumed", tmp_path / "work", echo=said.append,
                          exclude=EXCLUDE)
    assert "checkpoint at step 3" in said[-1] and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(dt.DirectorTrainer, "step", real_step)
    resumed = dt.train_director(_config(), tiny_base, tmp_path / "resumed", tmp_path / "work", echo=said.append,
                                exclude=EXCLUDE)
    assert "resuming from step 3 of 4" in said
    from safetensors.torch import load_file

    a, b = load_file(straight / dt.ADAPTER_WEIGHTS), load_file(resumed / dt.ADAPTER_WEIGHTS)
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2  # A and B, seven projections, two layers
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert any(b[k].abs().max() > 0 for k in b if "lora_B" in k)  # trained: B left zero would change nothing
    record = json.loads((resumed / "TRAINING.json").read_text())
    assert record["steps"] == 4 and record["config"]["lora_rank"] == 4 and len(record["base_model_sha256"]) == 64
    assert record["final_loss"] > 0 and record["command"].startswith("python -m direct2v models train-director")
    assert record["config"]["kind_weights"] == dd.KIND_WEIGHTS and len(record["loss_every_10_steps"]) == 1
    for other in (_config(lr=1e-3), _config(kind_weights={"two_moving": 1.0})):  # other examples: not this run
        with pytest.raises(CheckpointError, match="other settings"):
            dt.train_director(other, tiny_base, tmp_path / "other", tmp_path / "work", echo=said.append,
                              exclude=EXCLUDE)
    for bad in ({"sideways": 1.0}, {"across": 0.0}, {"across": -1.0, "appears": 2.0}):
        with pytest.raises(ValueError, match="kind_weights"):
            _config(kind_weights=bad)


def test_the_merged_model_answers_as_the_adapter_and_builds_the_same_bytes(tiny_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = dt.train_director(_config(steps=3, lora_dropout=0.0, adapter_dtype="float16"), tiny_base,
                                tmp_path / "adapter", tmp_path / "work", echo=lambda _: None, exclude=EXCLUDE)
    assert (adapter / "adapter_config.json").is_file()
    first = merge_director(tiny_base, adapter, tmp_path / "merged")
    second = merge_director(tiny_base, adapter, tmp_path / "merged-again")
    names = sorted(p.name for p in first.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names and names == sorted(p.name for p in second.iterdir())
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in names)

    ids = torch.tensor([list(range(5, 45))])
    base = AutoModelForCausalLM.from_pretrained(tiny_base, local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, adapter).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(first, local_files_only=True).eval()
        merged_logits = merged(ids).logits
    assert next(merged.parameters()).dtype == torch.float32
    assert (peft_logits - plain).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(merged_logits, peft_logits, atol=1e-4, rtol=0)


def test_micro_batches_accumulate_the_whole_batchs_gradient(tiny_base, tmp_path):
    """One step over a batch of 4 in passes of 1 or of 4: the same mean over all answer tokens, the same update."""
    states = []
    for micro in (1, 4):
        trainer = dt.DirectorTrainer(_config(batch_size=4, micro_batch=micro, lora_dropout=0.0), tiny_base,
                                     tmp_path / f"work-{micro}", EXCLUDE)
        loss = trainer.step(0)
        trainer.step(1)
        states.append((loss, trainer.adapter_state()))
    (loss_1, a), (loss_4, b) = states
    assert loss_1 == pytest.approx(loss_4, abs=1e-5)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)


def test_the_command_line_trains_merges_and_refuses_in_one_line(tiny_base, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from direct2v.cli import app
    from direct2v.cli.common import UserError

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = CliRunner()
    adapter, work = tmp_path / "adapter", tmp_path / "work"
    args = ["models", "train-director", "--base", str(tiny_base), "--out", str(adapter), "--work-dir", str(work),
            "--steps", "1", "--batch-size", "1", "--micro-batch", "1", "--lora-rank", "2", "--compute", "float32"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "trained shape-director adapter" in done.output and (adapter / dt.ADAPTER_WEIGHTS).is_file()
    assert json.loads((adapter / "TRAINING.json").read_text())["config"]["lora_rank"] == 2
    merged = runner.invoke(app, ["models", "merge-director", "--base", str(tiny_base), "--adapter", str(adapter),
                                 "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    other = runner.invoke(app, [*args[:-8], "--steps", "2", "--batch-size", "1", "--lora-rank", "2"])
    assert isinstance(other.exception, UserError) and "other settings" in str(other.exception)
    bad = runner.invoke(app, [*args[:-8], "--steps", "0"])
    assert isinstance(bad.exception, UserError) and "--steps" in str(bad.exception)
