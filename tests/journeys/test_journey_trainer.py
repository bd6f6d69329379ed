"""Journey: fine-tune a CLI masked-LM checkpoint with transformers' own Trainer, then save and reload.

The starting point is a checkpoint directory the CLI wrote (RUN/mlm/hydra/checkpoints/step-N), loaded with
``AutoModelForSequenceClassification.from_pretrained(DIR, num_labels=2)`` and ``AutoTokenizer`` as for
any BERT-like model on the Hub.
"""

import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # Trainer needs it: the hf and train extras install it
datasets = pytest.importorskip("datasets")

from tiny_runs import tiny_mlm_run  # noqa: E402



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tiny_mlm_run(tmp_path_factory.mktemp("pretrain"), 15_000, "--mixers", "hydra", "--steps", "3",
                       "--eval-every", "3", "--eval-batches", "1")
    ck = out / "mlm" / "hydra" / "checkpoints"
    steps = sorted(p for p in os.listdir(ck) if p.startswith("step-") and (ck / p / "config.json").is_file())
    return ck / steps[-1]


def test_trainer_fine_tunes_a_cli_checkpoint(checkpoint, tmp_path):
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    assert type(model).__name__ == "HydraForSequenceClassification"
    texts = ["def f(x): return x", "class A: pass", "import os", "for i in range(3): print(i)"] * 4
    texts[0] = " ".join(["return x"] * 40)  # longer than the 32 positions: truncation=True cuts it
    train = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))]})
    train = train.map(lambda b: tok(b["text"], truncation=True), batched=True, remove_columns=["text"])
    assert max(len(ids) for ids in train["input_ids"]) == tok.model_max_length == 32
    before = model.classifier.weight.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tok))
    out = trainer.train()
    assert out.global_step == 2 and torch.isfinite(torch.tensor(out.training_loss))
    assert not torch.equal(model.classifier.weight.detach(), before)  # it trained

    final = tmp_path / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(final)
    again = AutoModelForSequenceClassification.from_pretrained(final).eval()
    model.eval()
    batch = AutoTokenizer.from_pretrained(final)(texts[:3], truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, rtol=0, atol=0)
