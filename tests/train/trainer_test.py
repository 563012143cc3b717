"""End-to-end runs of the two entry points on tiny models: learning happens, exports load elsewhere."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

import rstar_train_testlib as testlib
from rstar_jax import tokenizer as tokenizer_lib
from rstar_jax.data import formats, pipeline
from rstar_jax.models import convert
from rstar_jax.train import config as config_lib
from rstar_jax.train import metrics_log, trainer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  path = tmp_path_factory.mktemp("base")
  records = testlib.arithmetic_sft_records(48)
  pairs = testlib.ppm_pairs(8, 0)
  testlib.tiny_hf_model(path, seed=0)
  texts = [formats.sft_prompt(r["query"]) + r["response"] for r in records] + [p.prompt + p.pos + p.neg for p in pairs]
  testlib.tiny_tokenizer(path, texts)
  return path, records


def test_sft_loss_falls_and_export_loads_in_transformers(base, tmp_path):
  path, records = base
  sft_file = testlib.write_json(tmp_path / "sft.json", records)
  config = config_lib.sft_config(
      data=pipeline.PipelineConfig(max_len=96, batch_size=8, num_epochs=3, seed=0),
      optimizer=config_lib.OptimizerConfig(learning_rate=3e-3, weight_decay=0.01),
      mesh=(1, 1, 1), checkpoint_every=100, progress=False)
  result = trainer.train_policy(path, sft_file, tmp_path / "work", config=config)
  assert result.steps == 18 and result.num_examples == 48
  logged = metrics_log.read_metrics(os.path.join(result.workdir, "metrics.jsonl"))
  assert sorted(logged) == list(range(1, 19))
  first, last = logged[1]["loss"], np.mean([logged[s]["loss"] for s in (16, 17, 18)])
  assert last < 0.6 * first, (first, last)
  assert logged[18]["accuracy"] > logged[1]["accuracy"]

  # The export is a plain HF dir: transformers loads weights and tokenizer, and the model learned the data. The
  # tokenizer is the one trained with: the rStar tags are in it (they used to be left out of the copied files).
  tok = tokenizer_lib.load_tokenizer(result.export_dir)
  assert tokenizer_lib.add_rstar_tokens(tok) == 0
  hf_tok = transformers.AutoTokenizer.from_pretrained(result.export_dir)
  for tag in tokenizer_lib.RSTAR_SPECIAL_TOKENS:
    assert hf_tok.convert_tokens_to_ids(tag) == tok.token_to_id(tag), tag
  assert hf_tok.encode(records[0]["response"], add_special_tokens=False) == tok.encode(records[0]["response"])
  prompt = tok.encode(formats.sft_prompt(records[0]["query"]))
  ids = prompt + tok.encode(records[0]["response"]) + [tok.eos_id]
  labels = [-100] * len(prompt) + ids[len(prompt):]  # response tokens only, as trained
  loss_of = lambda model: model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
  trained = transformers.AutoModelForCausalLM.from_pretrained(result.export_dir, dtype=torch.float32)
  original = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  assert loss_of(trained) < 0.6 * loss_of(original)
  assert json.loads((tmp_path / "work" / "export" / "config.json").read_text())["torch_dtype"] == "float32"


def test_ppm_learns_separable_pairs_and_exports_value_head(base, tmp_path):
  path, _ = base
  pairs_file = tmp_path / "pairs.jsonl"
  formats.write_ppm_pairs(pairs_file, testlib.ppm_pairs(64, 1))
  config = config_lib.ppm_config(
      data=pipeline.PipelineConfig(max_len=64, batch_size=16, num_epochs=8, seed=0),
      optimizer=config_lib.OptimizerConfig(learning_rate=3e-3, weight_decay=0.0),
      mesh=(1, 2, 1), checkpoint_every=1000, progress=False)  # fsdp=2: the value head joins a sharded backbone
  result = trainer.train_ppm(path, pairs_file, tmp_path / "work", config=config)
  assert result.steps == 32
  assert {"config.json", "model.safetensors", "value_head.bin", "tokenizer.json"} <= set(os.listdir(result.export_dir))

  # Held-out pairs, scored by the exported PPM loaded back from disk.
  tok = tokenizer_lib.load_tokenizer(result.export_dir)
  assert tokenizer_lib.add_rstar_tokens(tok, "ppm") == 0  # exported with the tags it was trained with
  ppm = convert.load_ppm(result.export_dir)
  held_out_pairs = testlib.ppm_pairs(64, 2)
  held_out = trainer.evaluate_ppm(ppm, held_out_pairs, tok, data=pipeline.PipelineConfig(max_len=64, batch_size=32))
  assert held_out["num_pairs"] == 64
  assert held_out["pair_accuracy"] > 0.9, held_out
  # The base model's tokenizer (no rStar tags) or a directory: the tags are added as train_ppm adds them. Without
  # them `<end_of_step>` became several tokens the PPM never saw, and the same pairs scored otherwise.
  for base_tok in (tokenizer_lib.load_tokenizer(path), path):
    got = trainer.evaluate_ppm(ppm, held_out_pairs, base_tok, data=pipeline.PipelineConfig(max_len=64, batch_size=32))
    assert got == held_out


def test_a_fresh_value_head_starts_as_the_official_one(base):
  # rStar-Math train/rm.py: nn.init.normal_(summary.weight, mean=5e-7, std=1e-6) and constant_(summary.bias, 1e-6).
  # Ours started at std 1e-3 and bias 0: at the official learning rate (7e-6) the random head outweighed what was
  # learned for about the first hundred steps.
  path, _ = base
  config = config_lib.ppm_config(mesh=(1, 1, 1))
  model_config, _ = trainer._model_config(path, config)
  head = trainer._initial_ppm(path, model_config, config, trainer._checked_mesh(config)).value_head
  torch.manual_seed(0)
  reference = torch.nn.Linear(model_config.hidden_size, 1)
  torch.nn.init.normal_(reference.weight, mean=5e-7, std=1e-6)
  torch.nn.init.constant_(reference.bias, 1e-6)
  assert np.asarray(head.bias[...]).tolist() == reference.bias.detach().numpy().tolist()
  size = model_config.hidden_size
  for kernel in (np.asarray(head.kernel[...])[:, 0], reference.weight.detach().numpy()[0]):
    assert kernel.shape == (size,)
    # 5 standard errors of the sample mean; the sample std within 40% (D = 64 draws).
    assert abs(kernel.mean() - 5e-7) < 5 * 1e-6 / np.sqrt(size), kernel.mean()
    assert 0.6e-6 < kernel.std() < 1.4e-6, kernel.std()


def test_a_data_file_with_nothing_to_train_on_is_named(base, tmp_path):
  # Both used to end in "no training examples left after tokenization", naming no file.
  path, records = base
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match=rf"^{empty}: no training examples$"):
    trainer.train_policy(path, empty, tmp_path / "work")
  sft_file = testlib.write_json(tmp_path / "sft.json", records[:3])
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=1, overlong="drop"))
  with pytest.raises(ValueError, match=rf"^{sft_file}: no training examples: tokenization dropped all 3 "):
    trainer.train_policy(path, sft_file, tmp_path / "work", config=config)
  assert not os.path.exists(tmp_path / "work" / "checkpoints")


@pytest.mark.parametrize("train", [trainer.train_policy, trainer.train_ppm])
def test_a_config_that_is_not_a_train_config_is_named(base, tmp_path, train):
  # A config file's dict (what TrainConfig.from_dict takes) failed as "'dict' object has no attribute
  # 'compute_dtype'" once the tokenizer had loaded.
  path, _ = base
  with pytest.raises(TypeError, match=r"config must be a TrainConfig \(TrainConfig.from_dict builds one from a "
                                      r"mapping\), got dict"):
    train(path, tmp_path / "data.json", tmp_path / "work", config={"mesh": [1, 1, 1]})
  assert not os.path.exists(tmp_path / "work")


def test_the_export_keeps_the_chat_template_file_of_the_starting_checkpoint(base, tmp_path):
  # transformers (4.47 on, 5.x) saves a chat template as chat_template.jinja; the export wrote our tokenizer's files
  # and generation_config.json only, so an instruct model's template was lost after SFT.
  path = tmp_path / "start"
  shutil.copytree(base[0], path)
  template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
  (path / "chat_template.jinja").write_text(template)
  assert transformers.AutoTokenizer.from_pretrained(path).chat_template == template
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
                                 mesh=(1, 1, 1), max_steps=1, progress=False)
  result = trainer.train_policy(path, testlib.write_json(tmp_path / "sft.json", base[1][:4]), tmp_path / "work",
                                config=config)
  assert transformers.AutoTokenizer.from_pretrained(result.export_dir).chat_template == template


def test_the_export_keeps_the_generation_config_of_the_starting_checkpoint_whatever_the_tokenizer(base, tmp_path):
  # generation_config.json (the EOS ids an instruct model's turns end on) was copied from the tokenizer's folder: with
  # a loaded tokenizer (or one from another folder) the export had none, so generation ran past the turn's end.
  path = tmp_path / "start"
  shutil.copytree(base[0], path)
  transformers.GenerationConfig(eos_token_id=[2, 1], do_sample=True, top_p=0.8).save_pretrained(path)
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
                                 mesh=(1, 1, 1), max_steps=1, progress=False)
  result = trainer.train_policy(path, testlib.write_json(tmp_path / "sft.json", base[1][:4]), tmp_path / "work",
                                config=config, tokenizer=tokenizer_lib.load_tokenizer(path))
  generation = transformers.GenerationConfig.from_pretrained(result.export_dir)
  assert (generation.eos_token_id, generation.top_p) == ([2, 1], 0.8)


def test_the_export_keeps_the_eos_ids_of_a_starting_checkpoint_without_a_generation_config(base, tmp_path):
  # Without generation_config.json, generation stops at config.json's eos_token_id (vLLM, transformers); the export
  # wrote config.json from ModelConfig, which holds no token ids, so the trained policy never stopped.
  path = tmp_path / "start"
  shutil.copytree(base[0], path)
  if (path / "generation_config.json").exists():
    (path / "generation_config.json").unlink()
  hf_config = json.loads((path / "config.json").read_text())
  (path / "config.json").write_text(json.dumps(dict(hf_config, eos_token_id=[2, 1], bos_token_id=3)))
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
                                 mesh=(1, 1, 1), max_steps=1, progress=False)
  result = trainer.train_policy(path, testlib.write_json(tmp_path / "sft.json", base[1][:4]), tmp_path / "work",
                                config=config)
  generation = transformers.GenerationConfig.from_model_config(transformers.AutoConfig.from_pretrained(
      result.export_dir))
  assert (generation.eos_token_id, generation.bos_token_id) == ([2, 1], 3)


@pytest.mark.parametrize("train,name", [(trainer.train_policy, "base_checkpoint"),
                                        (trainer.train_ppm, "init_checkpoint")])
def test_a_train_result_in_place_of_the_checkpoint_dir_is_named(base, tmp_path, train, name):
  # The module docstring showed `train_policy(...) -> policy HF dir`; it returns a TrainResult, and passing that on to
  # train_ppm failed as "expected str, bytes or os.PathLike object, not TrainResult", naming no argument.
  path, _ = base
  result = trainer.TrainResult(str(path), str(tmp_path / "sft"), 1, {}, 4, 0)
  with pytest.raises(TypeError, match=rf"{name} must be a path \(an HF dir\), got TrainResult: pass its .export_dir"):
    train(result, tmp_path / "data.json", tmp_path / "work")
  assert not os.path.exists(tmp_path / "work")


def _one_step_run(base, tmp_path, train):
  """A 4-row data file for `train` (SFT rows or PPM pairs) and a one-step config on one device."""
  data = (testlib.write_json(tmp_path / "sft.json", base[1][:4]) if train is trainer.train_policy
          else tmp_path / "pairs.json")
  if train is trainer.train_ppm:
    formats.write_ppm_pairs(data, testlib.ppm_pairs(4, 0))
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
                                 mesh=(1, 1, 1), max_steps=1, progress=False)
  return data, config


@pytest.mark.parametrize("train", [trainer.train_policy, trainer.train_ppm])
def test_an_export_over_the_starting_checkpoint_is_refused_before_training(base, tmp_path, train):
  # The export removed the starting folder's weights and wrote the trained ones there, after the whole run: the base
  # model every round's SFT starts from (or the SFT policy the PPM starts from) was gone.
  path = tmp_path / "start"
  shutil.copytree(base[0], path)
  data, config = _one_step_run(base, tmp_path, train)
  before = {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()}
  with pytest.raises(ValueError, match=rf"export_dir {path}/ is the checkpoint training starts from"):
    train(path, data, tmp_path / "work", config=config, export_dir=str(path) + "/")
  assert {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()} == before
  assert not os.path.exists(tmp_path / "work")


@pytest.mark.parametrize("train", [trainer.train_policy, trainer.train_ppm])
@pytest.mark.parametrize("where", ["a_file", "a_file/export"])
def test_an_export_dir_that_is_or_is_under_a_file_is_refused_before_training(base, tmp_path, train, where):
  # The export failed with NotADirectoryError / FileExistsError only once the whole run had trained.
  (tmp_path / "a_file").write_text("the user's")
  data, config = _one_step_run(base, tmp_path, train)
  with pytest.raises(ValueError, match=rf"export_dir {tmp_path / where}: {tmp_path / 'a_file'} is a file, not a "
                                       "folder"):
    train(base[0], data, tmp_path / "work", config=config, export_dir=tmp_path / where)
  assert (tmp_path / "a_file").read_text() == "the user's"
  assert not os.path.exists(tmp_path / "work")


@pytest.mark.parametrize("train", [trainer.train_policy, trainer.train_ppm])
def test_training_holds_one_copy_of_the_weights_beside_the_two_adam_moments(base, tmp_path, train):
  # The initial model's parameters stayed alive for the whole run (create_state copied them into the state while the
  # trainer's caller frame kept the model): 4 weight-sized arrays per parameter on the devices instead of 3 (the
  # weight and AdamW's mu and nu), a third more device memory than the training state needs.
  import gc
  import jax
  start = tmp_path / "start"
  # An embedding shape no other test's model has ([vocab 520, hidden 48]; tied, so no [48, 520] head): arrays that
  # other tests keep alive in this process are not counted.
  testlib.tiny_hf_model(start, vocab_size=520, hidden=48)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(base[0] / name, start / name)
  data = (testlib.write_json(tmp_path / "sft.json", base[1][:8]) if train is trainer.train_policy
          else tmp_path / "pairs.json")
  if train is trainer.train_ppm:
    formats.write_ppm_pairs(data, testlib.ppm_pairs(8, 0))
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
                                 mesh=(1, 2, 1), max_steps=2, log_every=1, checkpoint_every=100, progress=False)
  counts = []

  def count_embedding_tables(step, scalars):
    gc.collect()
    counts.append(sum(a.shape == (520, 48) and a.dtype == np.float32 for a in jax.live_arrays()))

  train(start, data, tmp_path / "work", config=config, step_callback=count_embedding_tables)
  assert counts == [3, 3]


def test_a_second_trainer_on_a_running_trainer_s_workdir_is_refused(base, tmp_path):
  # Nothing kept a second trainer out of a workdir another was training in: they wrote over each other's
  # checkpoints, run.json and metrics.jsonl. Here the second starts while the first is at its first step.
  from rstar_jax import files  # pylint: disable=g-import-not-at-top
  path, records = base
  data = testlib.write_json(tmp_path / "sft.json", records[:8])
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
                                 mesh=(1, 1, 1), max_steps=2, log_every=1, checkpoint_every=100, progress=False)
  refused = []

  def start_a_second_trainer(step, scalars):
    if not refused:
      with pytest.raises(files.FolderInUseError, match=rf"{tmp_path / 'work'}: another trainer is writing here"):
        trainer.train_policy(path, data, tmp_path / "work", config=config, export_dir=tmp_path / "other_export")
      refused.append(step)

  result = trainer.train_policy(path, data, tmp_path / "work", config=config, step_callback=start_a_second_trainer)
  assert refused == [1] and result.steps == 2 and not os.path.exists(tmp_path / "other_export")
  again = trainer.train_policy(path, data, tmp_path / "work", config=config)  # once it ended: a finished resume
  assert again.steps == 2


@pytest.mark.parametrize("changes,message", [
    (dict(mesh=(-1, -1, 1)), r"at most one mesh axis may be -1"),
    (dict(mesh=(1, 1000, 1)), r"mesh data=1 x fsdp=1000 x tensor=1 needs 1000 devices"),
    (dict(mesh=(1, 1, 1), accum_steps=3), r"global batch 128 must split into accum_steps=3 micro-batches"),
])
def test_a_mesh_or_batch_split_that_cannot_work_is_refused_before_the_data_is_tokenized(base, tmp_path, changes,
                                                                                        message, monkeypatch):
  # The mesh was first built to load the model, and the batch split checked after that, once the whole SFT / pair
  # file had been tokenized (and, for the split, the weights loaded).
  tokenized = []
  monkeypatch.setattr(pipeline, "tokenize_sft", lambda *a: tokenized.append(a))
  path, records = base
  with pytest.raises(ValueError, match=message):
    trainer.train_policy(path, testlib.write_json(tmp_path / "sft.json", records[:4]), tmp_path / "work",
                         config=config_lib.sft_config(**changes))
  assert not tokenized


def test_evaluate_ppm_batch_that_does_not_split_over_the_devices():
  # evaluate_ppm's default mesh takes every device; its batch (default 32, here 3) was put on it as is, so a batch
  # that the device count does not divide (3 on these 8 CPU devices; 32 on a 64-chip slice) raised IndivisibleError.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rstar_jax.models import PPM, ModelConfig, default_positions  # pylint: disable=g-import-not-at-top

  class CharTokenizer:
    eos_id, pad_id = 1, 0

    def encode(self, text):
      return [3 + ord(c) % 200 for c in text]

  tok = CharTokenizer()
  pairs = [formats.PpmPair(prompt="q" * i + "?", pos="a" * (i % 3 + 1), neg="b" * (i % 4 + 2), pos_count=1,
                           neg_count=1 + i % 2) for i in range(7)]
  ppm = PPM(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  ppm.value_head.kernel[...] = ppm.value_head.kernel[...] * 300.0  # scores that differ visibly between sides
  got = trainer.evaluate_ppm(ppm, pairs, tok, data=pipeline.PipelineConfig(max_len=64, batch_size=3))

  # Reference: each text scored alone (one row, right-padded to 64), then the Bradley-Terry formula by hand.
  forward = nnx.jit(lambda model, ids, mask: model(ids, default_positions(mask), mask))

  def score(text):
    ids = tok.encode(text)
    mask = jnp.arange(64)[None] < len(ids)
    return float(forward(ppm, jnp.asarray([ids + [0] * (64 - len(ids))], jnp.int32), mask)[0])

  margins = np.array([score(p.prompt + p.pos) - score(p.prompt + p.neg) for p in pairs])
  weights = np.array([p.weight for p in pairs])
  assert got["num_pairs"] == 7
  np.testing.assert_allclose(got["loss"], np.mean(weights * np.log1p(np.exp(-margins))), rtol=1e-4)
  assert got["pair_accuracy"] == np.mean(margins > 0)
  # Pairs from an iterator: the type check read them all, so the evaluation found none ("no pairs left to evaluate").
  from_iterator = trainer.evaluate_ppm(ppm, iter(pairs), tok, data=pipeline.PipelineConfig(max_len=64, batch_size=3))
  assert from_iterator["num_pairs"] == 7
  np.testing.assert_allclose(from_iterator["loss"], np.mean(weights * np.log1p(np.exp(-margins))), rtol=1e-4)
  # No pairs, or none left after the max_len cut, is said as such (it was the pipeline's "no training examples").
  with pytest.raises(ValueError, match=r"^evaluate_ppm: no pairs to evaluate$"):
    trainer.evaluate_ppm(ppm, [], tok)
  with pytest.raises(ValueError, match=r"^evaluate_ppm: no pairs left to evaluate \(.*dropped all 7"):
    trainer.evaluate_ppm(ppm, pairs, tok, data=pipeline.PipelineConfig(max_len=1, overlong="drop"))


def test_evaluate_ppm_names_pairs_and_head_of_the_wrong_kind(tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from rstar_jax.models import PPM, ModelConfig  # pylint: disable=g-import-not-at-top
  ppm = PPM(ModelConfig.tiny(), rngs=nnx.Rngs(0))
  pairs_file = tmp_path / "pairs.json"
  pairs = [formats.PpmPair(prompt="q?", pos="a", neg="b", pos_count=1, neg_count=1)]
  formats.write_ppm_pairs(pairs_file, pairs)
  # The path train_ppm takes was iterated character by character: "'str' object has no attribute 'prompt'".
  with pytest.raises(TypeError, match=r"pairs must be a sequence of PpmPair \(formats.read_ppm_pairs\(path\) reads a "
                                      r"file\), got str"):
    trainer.evaluate_ppm(ppm, str(pairs_file), None)
  # The scorer's transform name: "unknown PPM head 'tanh5'" came from inside the first jitted step.
  with pytest.raises(ValueError, match=r"head must be one of \('raw', 'tanh'\) \(how the PPM was trained\), got "
                                       r"'tanh5'"):
    trainer.evaluate_ppm(ppm, formats.read_ppm_pairs(pairs_file), None, head="tanh5")


def test_a_re_export_into_the_same_folder_replaces_the_earlier_tokenizer_files(tmp_path):
  # The weights of an earlier export into the folder are replaced (convert._write_hf_dir); its tokenizer files were
  # kept (copied only where none existed), so the new weights came with the old tokenizer and generation config.
  old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "export"
  for folder in (old, new, out):
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # as a conversion writes it (the export's, before the tokenizer)
  (old / "tokenizer.json").write_text("old")
  (old / "generation_config.json").write_text('{"eos_token_id": 1}')
  (new / "tokenizer.json").write_text("new")
  tokenizer = object()  # no `save`: the source folder's files are copied
  # (The tokenizer's folder doubles as the checkpoint training started from, where generation_config.json comes from.)
  trainer._export_tokenizer(tokenizer, str(old), str(out), str(old))
  trainer._export_tokenizer(tokenizer, str(new), str(out), str(new))
  assert (out / "tokenizer.json").read_text() == "new"
  assert not (out / "generation_config.json").exists()
  # The export's own folder as the source: left as it is.
  trainer._export_tokenizer(tokenizer, str(out), str(out), str(out))
  assert (out / "tokenizer.json").read_text() == "new"


@pytest.mark.slow
def test_an_untied_policy_s_export_holds_the_last_checkpoint_s_weights_and_runs_in_transformers(base, tmp_path):
  # The export must be the trained state: the final checkpoint's fp32 parameters (read raw from orbax, no model code),
  # laid out as HF Qwen2 tensors by hand, must equal the exported float32 tensors bit for bit; and transformers must
  # give the logits our model gives from the same folder.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from rstar_jax.models import default_positions  # pylint: disable=g-import-not-at-top
  start = tmp_path / "start"
  testlib.tiny_hf_model(start, tie=False, seed=4)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(base[0] / name, start / name)
  config = config_lib.sft_config(data=pipeline.PipelineConfig(max_len=96, batch_size=4, num_epochs=1),
                                 optimizer=config_lib.OptimizerConfig(learning_rate=1e-2), mesh=(1, 1, 1),
                                 max_steps=2, export_dtype="float32", progress=False, tensorboard=False)
  result = trainer.train_policy(start, testlib.write_json(tmp_path / "sft.json", base[1][:8]), tmp_path / "work",
                                config=config)
  exported = load_file(os.path.join(result.export_dir, "model.safetensors"))
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore(tmp_path / "work" / "checkpoints" / "2" / "state")
  # nnx.Param leaves are saved as {"value": array}.
  unwrap = lambda t: np.asarray(t["value"]) if set(t) == {"value"} else {k: unwrap(v) for k, v in t.items()}
  params = unwrap(saved["params"])
  assert int(saved["step"]) == 2
  backbone, layers = params["model"], params["model"]["layers"]
  d, heads, head_dim = layers["self_attn"]["q_proj"]["kernel"].shape[1:]
  want = {"model.embed_tokens.weight": backbone["embed_tokens"]["embedding"],
          "lm_head.weight": params["lm_head"]["kernel"].T, "model.norm.weight": backbone["norm"]["weight"]}
  for l in range(2):
    want[f"model.layers.{l}.self_attn.q_proj.weight"] = layers["self_attn"]["q_proj"]["kernel"][l].reshape(
        d, heads * head_dim).T
    want[f"model.layers.{l}.self_attn.q_proj.bias"] = layers["self_attn"]["q_proj"]["bias"][l].reshape(-1)
    want[f"model.layers.{l}.self_attn.o_proj.weight"] = layers["self_attn"]["o_proj"]["kernel"][l].reshape(
        heads * head_dim, d).T
    want[f"model.layers.{l}.mlp.down_proj.weight"] = layers["mlp"]["down_proj"]["kernel"][l].T
    want[f"model.layers.{l}.post_attention_layernorm.weight"] = layers["post_attention_layernorm"]["weight"][l]
  original = load_file(os.path.join(start, "model.safetensors"))
  for name, value in want.items():
    assert exported[name].dtype == np.float32, name
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  assert not np.array_equal(exported["lm_head.weight"], original["lm_head.weight"])  # it did train
  assert not np.array_equal(exported["lm_head.weight"], exported["model.embed_tokens.weight"].T)  # and stayed untied

  hf = transformers.AutoModelForCausalLM.from_pretrained(result.export_dir, dtype=torch.float32).eval()
  ours = convert.load_qwen2(result.export_dir)
  tokens = np.random.default_rng(0).integers(0, 512, (2, 12))
  mask = np.ones_like(tokens, dtype=bool)
  mask[1, :5] = False  # a left-padded row
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
  got = np.asarray(ours(jnp.asarray(tokens), default_positions(jnp.asarray(mask)), jnp.asarray(mask)).logits)
  np.testing.assert_allclose(got[mask], ref[mask], atol=2e-5, rtol=1e-5)
