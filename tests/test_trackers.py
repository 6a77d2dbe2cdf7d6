"""What a run reports and publishes besides its run directory: trackers (report_to) get the numbers of
metrics.jsonl, push_to_hub uploads the final model, chat_template_kwargs reaches every chat template."""

import json

import pytest

from sftrl import cli
from sftrl.data import render_prompt
from sftrl.trainer import Trainer

from conftest import make_config


def sft_config(tmp_path, model_dir, **overrides):
    """conftest's small run, as SFT for 3 steps on 32 rows."""
    return make_config(tmp_path, model_dir, **{"method": "sft", "max_steps": 3, "max_train_examples": 32, **overrides})


def test_tensorboard_gets_the_metrics_of_metrics_jsonl(tmp_path, tiny_model_dir):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = sft_config(tmp_path, tiny_model_dir, report_to="tensorboard")
    Trainer(config).train()
    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    # The run's scalars are in trackers/<run name>; the hyperparameters in a subdirectory of it.
    events = event_accumulator.EventAccumulator(str(config.run_dir / "trackers" / config.run_dir.name),
                                                size_guidance={"scalars": 0})
    events.Reload()
    for key in ("loss", "sft/loss", "grad_norm", "learning_rate"):
        logged = [(r["step"], r[key]) for r in records if key in r]
        assert len(logged) == 3
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(key)] == logged, key


def test_push_to_hub_uploads_the_final_model_directory(tmp_path, tiny_model_dir, monkeypatch):
    import huggingface_hub

    calls = []

    class Repo(str):
        repo_id = "someone/sandbox-sft"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, exist_ok=False: calls.append(("create", repo_id)) or Repo("https://hf.co/x"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, repo_id, folder_path, commit_message: calls.append(("upload", repo_id, folder_path)))
    config = sft_config(tmp_path, tiny_model_dir, max_steps=1, push_to_hub=True, hub_model_id="someone/sandbox-sft")
    Trainer(config).train()
    assert calls == [("create", "someone/sandbox-sft"), ("upload", "someone/sandbox-sft", str(config.run_dir / "model"))]


TEMPLATE = "{{ messages[-1]['content'] }}{% if think is defined and not think %}:quiet{% else %}:think{% endif %}"


@pytest.fixture
def template_model_dir(tmp_path, tiny_model_dir):
    """The tiny model with a chat template that branches on a keyword argument, as Qwen3's does."""
    from sftrl.sandbox.tokenizer import build_tokenizer
    from transformers import AutoModelForCausalLM

    path = tmp_path / "template-model"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(path)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def test_chat_template_kwargs_reach_training_and_evaluation(tmp_path, template_model_dir, monkeypatch):
    from sftrl.models import load_tokenizer

    tokenizer = load_tokenizer(str(template_model_dir))
    assert render_prompt(tokenizer, "1+1=") == "1+1=:think"
    assert render_prompt(tokenizer, "1+1=", {"think": False}) == "1+1=:quiet"

    trainer = Trainer(sft_config(tmp_path, template_model_dir, chat_template_kwargs={"think": False},
                                  eval_data="sandbox:test", max_eval_examples=1))
    example = trainer.rows.examples[0]
    assert tokenizer.decode(trainer.prompt_ids(example)).endswith(":quiet")  # the tokens trained on
    import sftrl.evaluate
    import sftrl.experience

    seen = []

    def recording(model, tokenizer, texts, **kwargs):
        seen.extend(texts)
        raise StopIteration  # the texts are all this test needs

    monkeypatch.setattr(sftrl.experience, "generate_completions", recording)
    with pytest.raises(StopIteration):
        trainer.generate([example], 2)  # rollouts
    monkeypatch.setattr(sftrl.evaluate, "generate_completions", recording)
    with pytest.raises(StopIteration):
        trainer.evaluate()  # accuracy during training
    with pytest.raises(StopIteration):  # sftrl eval
        cli.main(["eval", "--model", str(template_model_dir), "--data", "sandbox:test", "--limit", "1",
                  "--chat-template-kwargs", '{"think": false}', "-o", str(tmp_path / "eval")])
    assert len(seen) == 3 and all(text.endswith(":quiet") for text in seen), seen


def test_analyze_renders_with_chat_template_kwargs(template_model_dir, monkeypatch):
    import sftrl.analyze
    from sftrl.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(template_model_dir))
    seen = []
    monkeypatch.setattr(sftrl.analyze, "render_prompt",
                        lambda tok, prompt, kwargs=None: seen.append(render_prompt(tok, prompt, kwargs)) or seen[-1])
    sftrl.analyze.response_token_probs(load_model(str(template_model_dir)), tokenizer, [("1+1=", "2")],
                                       chat_template_kwargs={"think": False})
    assert seen == ["1+1=:quiet"]
